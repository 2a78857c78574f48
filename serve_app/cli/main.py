"""The `dreamlab` command line: inspect, demo-models, generate, status, shutdown."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from serve_app.core.errors import DreamLabError
from serve_app.core.strict_model import describe_error

logger = logging.getLogger(__name__)


def _adapter_kind(args: argparse.Namespace):
    """The adapter kind to inspect `args.path` as: `--adapter`, else its folder (`loras/`, ...); None: a checkpoint."""
    from serve_app.model.inspection.adapter_inspect import ADAPTER_FOLDERS, AdapterKind

    if args.adapter:
        return AdapterKind(args.adapter)
    folder = Path(args.path).expanduser().resolve().parent.name
    return next((kind for kind, name in ADAPTER_FOLDERS.items() if name == folder), None)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from serve_app.model.inspection.adapter_inspect import inspect_adapter
    from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint
    from serve_app.model.inspection.vram_estimate import estimate_vram

    kind = _adapter_kind(args)
    if kind is not None:
        adapter = inspect_adapter(args.path, kind).model_dump(mode="json")
        print(json.dumps(adapter, indent=2) if args.json else "\n".join(f"{k:22} {v}" for k, v in adapter.items()
                                                                         if v is not None))
        return 0
    info = inspect_checkpoint(args.path)
    est = estimate_vram(info, args.dtype, args.width, args.height, args.batch_size)
    report = info.model_dump(mode="json", exclude={"metadata"})
    report["estimated_vram_bytes"] = est.total_bytes
    report["vram_estimate"] = est.model_dump(mode="json")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key in ("path", "format", "family", "variant", "layout", "cross_attention_dim", "inpainting", "dtype",
                    "prediction_type", "components", "missing_components", "serving_refusal", "param_count",
                    "param_bytes", "file_bytes"):
            print(f"{key:22} {report[key]}")
        print(f"{'estimated_vram_bytes':22} {est.total_bytes} ({est.total_bytes / 2**30:.2f} GiB at {est.dtype}, "
              f"{est.width}x{est.height}, batch {est.batch_size})")
    return 0


def _cmd_demo_models(args: argparse.Namespace) -> int:
    from serve_app.model.demo.demo_models import write_demo_models

    for path in write_demo_models(args.directory):
        print(path)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import base64

    from serve_app.api.request_resolution import resolve_request
    from serve_app.api.schemas.native import Img2ImgRequest, Txt2ImgRequest
    from serve_app.config.modes_file import ModeConfig, ModeDefaults
    from serve_app.model.generation.runner import ModelRunner

    checkpoint = Path(args.checkpoint).expanduser().resolve()
    mode = ModeConfig(name="cli", checkpoint=str(checkpoint), dtype=args.dtype,
                      defaults=ModeDefaults(width=64, height=64, steps=20))
    runner = ModelRunner(mode, checkpoint)
    fields = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, width=args.width, height=args.height,
                  steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed, scheduler=args.scheduler,
                  output_format=Path(args.output).suffix.lstrip(".").lower().replace("jpg", "jpeg") or "png")
    req: Txt2ImgRequest
    if args.image:
        req = Img2ImgRequest(**fields, image=base64.b64encode(Path(args.image).read_bytes()).decode(),
                             strength=args.strength)
    else:
        req = Txt2ImgRequest(**fields)
    params = resolve_request(req, mode, runner.family)
    runner.load()
    result = runner.generate(params)
    Path(args.output).write_bytes(result.images[0].data)
    print(f"{args.output}: {result.width}x{result.height}, seed {result.images[0].seed}, "
          f"{result.timings.inference_s:.2f}s")
    return 0


def _cmd_shutdown(args: argparse.Namespace) -> int:
    from serve_app.cli.drain_shutdown import drain_and_shutdown

    drivers = drain_and_shutdown(address=args.address, timeout_s=args.timeout)
    if drivers:
        print(f"Serve is shut down; the `serve run` process(es) {', '.join(map(str, drivers))} ended")
    else:
        print("Serve is shut down. A `serve run` on another host keeps its terminal: press Ctrl-C there.")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from serve_app.cli.status_view import show

    try:
        show(args.url, args.api_key or os.environ.get("DREAMLAB_API_KEY"), args.watch)
    except OSError as exc:
        print(f"dreamlab status: error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamlab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="what a checkpoint or an adapter file is, read from its headers only")
    p.add_argument("path")
    p.add_argument("--adapter", choices=["lora", "embedding", "vae"], default=None,
                   help="inspect as this adapter kind (default: from the folder: loras/, embeddings/, vae/)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16", help="target dtype of the estimate")
    p.add_argument("--width", type=int, default=None, help="resolution of the estimate (family default)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("demo-models", help="write the tiny demo checkpoints (all families, both formats)")
    p.add_argument("directory")
    p.set_defaults(func=_cmd_demo_models)

    p = sub.add_parser("generate", help="one image from a checkpoint to a file, without a server")
    p.add_argument("--checkpoint", required=True, help="diffusers folder or .safetensors file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--output", "-o", default="out.png", help="file to write (.png, .jpg, .webp)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    p.add_argument("--image", default=None, help="init image: makes it img2img")
    p.add_argument("--strength", type=float, default=None)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("status", help="the running app at a glance: modes, VRAM per device, RAM tier, queues")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the app's HTTP address")
    p.add_argument("--api-key", default=None, help="a client key when keys are on (default: $DREAMLAB_API_KEY)")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("shutdown", help="drain-first stop of a running Dream Lab (then Serve shuts down)")
    p.add_argument("--address", default="auto", help="Ray cluster address")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for in-flight work")
    p.set_defaults(func=_cmd_shutdown)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except DreamLabError as exc:
        print(f"dreamlab {args.command}: error: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a CLI-built request or mode with a bad value
        print(f"dreamlab {args.command}: error: {describe_error(exc.errors()[0])[1]}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"dreamlab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
