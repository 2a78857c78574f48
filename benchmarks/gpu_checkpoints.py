"""Bench modes and their full-size random checkpoints, for `bench_gpu.py`: the two modes (their modes-file entry and
the prompt both phases send), building seeded random-weight SD1.5/SDXL pipelines from the shipped configs and
writing them as checkpoints, the files a load reads (with a single file's conversion cache entry), raw read timing
and the page-cache state (warm or cold) before loads and reads.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench_gpu.checkpoints")

GiB = 1024**3
MiB = 1024**2
CHUNK = 16 * MiB


# -- the modes and the requests both phases send ------------------------------------------------------------------
PROMPT = "a lighthouse on a cliff at dusk, oil painting, detailed"
PEAK_STEPS = 2  # the largest request's peak memory does not depend on the step count


@dataclasses.dataclass(frozen=True)
class BenchMode:
    name: str
    family: str  # a `Family` value
    size: int  # default (and largest) width and height


MODES = (BenchMode("sd15", "sd1", 512), BenchMode("sdxl", "sdxl", 1024))


def mode_entry(mode: BenchMode, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    size = args.size or mode.size
    return {
        "name": mode.name,
        "checkpoint": path.name,
        "dtype": args.dtype,
        "load_on_start": False,
        "defaults": {"width": size, "height": size, "steps": args.steps},
        "limits": {"max_width": size, "max_height": size, "max_steps": max(100, args.steps),
                   "max_num_images": args.max_images},
        "deployment": {"num_replicas": 1, "graceful_shutdown_timeout_s": 10,
                       "ray_actor_options": {"num_gpus": 0.5, "num_cpus": 0}},
    }


# -- building the checkpoints -----------------------------------------------------------------------------------
@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """Build modules directly in `dtype` (SDXL's UNet in fp32 would need 10 GB of RAM just to be cast)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_full_size_pipeline(family: str, seed: int) -> Any:
    """The family's diffusers pipeline from its shipped config folder, with seeded random fp16 weights.

    Each component gets its own seed (from `seed`, the family and the component name), so the weights do not
    depend on build order. Tokenizers are the demo models' byte-level CLIP tokenizer with the family's pad
    token (its ids fit in the real 49408-token embedding).
    """
    import diffusers
    import torch
    import transformers

    from serve_app.model.demo.architectures import byte_level_clip_tokenizer
    from serve_app.model.loading.family_configs import config_dir

    root = Path(config_dir(family))
    index = json.loads((root / "model_index.json").read_text())
    components: dict[str, Any] = {}
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, list):
            continue
        library, class_name = spec
        if class_name is None:
            components[name] = None
            continue
        cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
        folder = root / name
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(f"{family}/{name}".encode()))
        if issubclass(cls, diffusers.SchedulerMixin):
            components[name] = cls.from_config(cls.load_config(folder))
        elif issubclass(cls, diffusers.ModelMixin):
            with default_dtype(torch.float16):
                components[name] = cls.from_config(cls.load_config(folder))
        elif issubclass(cls, transformers.PreTrainedModel):
            with default_dtype(torch.float16):
                components[name] = cls(cls.config_class.from_pretrained(folder))
        elif "Tokenizer" in class_name:
            pad = json.loads((folder / "tokenizer_config.json").read_text()).get("pad_token", "<|endoftext|>")
            components[name] = byte_level_clip_tokenizer(pad_token=pad)
        else:
            raise ValueError(f"{root}: no builder for component {name!r} ({library}.{class_name})")
    options = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    return getattr(diffusers, index["_class_name"])(**components, **options)


def checkpoint_path(work: Path, mode: BenchMode, fmt: str) -> Path:
    return work / (f"full-{mode.name}" if fmt == "folder" else f"full-{mode.name}.safetensors")


def build_checkpoints(work: Path, fmt: str, seed: int) -> dict[str, Path]:
    """Write the missing checkpoints into `work`; return mode name -> checkpoint path."""
    import torch

    from serve_app.model.families import Family
    from serve_app.model.loading.single_file_writer import write_single_file

    paths: dict[str, Path] = {}
    for mode in MODES:
        target = paths[mode.name] = checkpoint_path(work, mode, fmt)
        if (target / "model_index.json").is_file() or target.is_file():
            print(f"[build] {mode.name}: reusing {target}")
            continue
        started = time.perf_counter()
        pipe = build_full_size_pipeline(mode.family, seed)
        built_s = time.perf_counter() - started
        counts = {name: sum(p.numel() for p in c.parameters()) for name, c in pipe.components.items()
                  if isinstance(c, torch.nn.Module)}
        started = time.perf_counter()
        if fmt == "folder":
            partial = work / f".{target.name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            pipe.save_pretrained(partial, safe_serialization=True)
            os.replace(partial, target)  # atomic: a folder that exists is complete
        else:
            write_single_file(pipe, Family(mode.family), target, dtype=torch.float16)
        write_s = time.perf_counter() - started
        del pipe
        gc.collect()
        print(f"[build] {mode.name}: {sum(counts.values()) / 1e9:.3f} B parameters "
              f"({', '.join(f'{k} {v / 1e6:.1f} M' for k, v in sorted(counts.items()))}); built in {built_s:.1f}s, "
              f"{file_bytes(target) / 1e9:.2f} GB written in {write_s:.1f}s -> {target}")
    return paths


# -- files and the page cache -------------------------------------------------------------------------------------
def files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []


def file_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in files_under(path))


def conversion_entry(path: Path) -> Path | None:
    """The conversion cache entry of the single file `path` (what its cold loads read), newest first; None if none."""
    from serve_app.model.loading.converted_cache import MANIFEST_NAME, resolve_cache_dir

    root = resolve_cache_dir(path)
    if root is None or not root.is_dir():
        return None
    found = []
    for entry in root.iterdir():
        try:
            source = json.loads((entry / MANIFEST_NAME).read_text())["key"]["source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if Path(source).resolve() == path.resolve():
            found.append(entry)
    return max(found, key=lambda e: e.stat().st_mtime, default=None)


def load_files(path: Path) -> list[Path]:
    """What a load of `path` reads: a folder's files; a single file and its conversion cache entry."""
    entry = conversion_entry(path) if path.is_file() else None
    return files_under(path) + (files_under(entry) if entry is not None else [])


def read_files(files: list[Path]) -> tuple[int, float]:
    """Read every byte (unbuffered, 16 MiB chunks): (bytes, seconds)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    started = time.perf_counter()
    for f in files:
        with f.open("rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return total, time.perf_counter() - started


def drop_page_cache(files: list[Path]) -> bool:
    """Evict the files' pages from the page cache (fsync first: dirty pages are not evicted); False if unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def prepare_page_cache(path: Path, page_cache: str) -> None:
    """Put the files a load of `path` reads in the `page_cache` state (warm: read once; cold: evicted)."""
    files = load_files(path)
    if page_cache == "warm":
        read_files(files)
    elif not drop_page_cache(files):
        logger.warning("posix_fadvise is missing: 'cold' reads and loads see whatever the page cache holds")


def raw_read(path: Path, page_cache: str) -> tuple[int, float]:
    """Time a raw read of the checkpoint's own files in the `page_cache` state: (bytes, seconds). It leaves
    everything a load reads in that state."""
    prepare_page_cache(path, page_cache)
    result = read_files(files_under(path))
    if page_cache == "cold":
        prepare_page_cache(path, page_cache)
    return result
