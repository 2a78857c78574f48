"""The `dreamlab` command line: inspect (JSON), errors on stderr with a non-zero status, generate to a file,
and the installed console script itself."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from serve_app.cli.main import main
from serve_app.model.inspection.checkpoint_inspect import inspect_checkpoint
from serve_app.model.inspection.vram_estimate import estimate_vram

DEMO_CHECKPOINTS = [f"tiny-{family}{suffix}" for family in ("sd1", "sd2", "sdxl", "sdxl-refiner")
                    for suffix in ("", ".safetensors")]
DIM = {"sd1": 768, "sd2": 1024, "sdxl": 2048, "sdxl-refiner": 1280}
REPORT_KEYS = {"format", "family", "cross_attention_dim", "inpainting", "dtype", "file_bytes", "estimated_vram_bytes"}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("name", DEMO_CHECKPOINTS)
def test_inspect_json(capsys, demo_models_dir: Path, name: str) -> None:
    path = demo_models_dir / name
    status, out, err = _run(capsys, "inspect", str(path), "--json")
    assert status == 0 and err == ""
    report = json.loads(out)
    assert set(report) >= REPORT_KEYS
    family = name.removeprefix("tiny-").removesuffix(".safetensors")
    single = name.endswith(".safetensors")
    assert report["family"] == family
    assert report["format"] == ("single-file" if single else "diffusers")
    assert report["cross_attention_dim"] == DIM[family]
    assert report["inpainting"] is False
    assert report["dtype"] == ("float16" if single else "float32")
    on_disk = [path] if single else [f for f in path.rglob("*") if f.is_file()]
    assert report["file_bytes"] == sum(f.stat().st_size for f in on_disk)
    info = inspect_checkpoint(path)
    assert report["estimated_vram_bytes"] == estimate_vram(info, "fp16").total_bytes
    assert report["vram_estimate"]["dtype"] == "fp16"


def test_inspect_options_change_the_estimate(capsys, demo_models_dir: Path) -> None:
    path = str(demo_models_dir / "tiny-sdxl.safetensors")
    reports = {}
    for label, extra in {"base": [], "fp32": ["--dtype", "fp32"], "big": ["--width", "2048", "--height", "2048"],
                         "batch": ["--batch-size", "4"]}.items():
        status, out, _ = _run(capsys, "inspect", path, "--json", *extra)
        assert status == 0
        reports[label] = json.loads(out)
    base = reports["base"]["estimated_vram_bytes"]
    assert all(reports[k]["estimated_vram_bytes"] > base for k in ("fp32", "big", "batch"))
    assert reports["fp32"]["vram_estimate"]["weights_bytes"] == 2 * reports["base"]["vram_estimate"]["weights_bytes"]
    assert reports["big"]["vram_estimate"]["width"] == 2048 and reports["batch"]["vram_estimate"]["batch_size"] == 4


def test_inspect_text_output(capsys, demo_models_dir: Path) -> None:
    status, out, _ = _run(capsys, "inspect", str(demo_models_dir / "tiny-sd2"))
    assert status == 0
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["family"] == "sd2" and lines["cross_attention_dim"] == "1024" and lines["format"] == "diffusers"
    assert "GiB at fp16" in lines["estimated_vram_bytes"]


# -- errors: non-zero status, message on stderr, nothing on stdout ----------------------------------------

def _corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 20) + b'{"x": 1}')
    return path


def _pickle(tmp_path: Path) -> Path:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, path)
    return path


def _dim512(tmp_path: Path) -> Path:
    path = tmp_path / "odd.safetensors"
    unet = "model.diffusion_model."
    save_file({unet + "input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
               unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, 512)}, str(path))
    return path


@pytest.mark.parametrize(("make", "words"), [
    (lambda tmp: tmp / "missing.safetensors", ["does not exist"]),
    (_corrupt, ["corrupt"]),
    (_pickle, ["pickle", "arbitrary code"]),
    (_dim512, ["512", "unsupported"]),
    (lambda tmp: tmp, ["not a checkpoint"]),
], ids=["missing", "corrupt", "pickle", "dim512", "plain-dir"])
def test_inspect_errors(capsys, tmp_path: Path, make, words: list[str]) -> None:
    path = make(tmp_path)
    status, out, err = _run(capsys, "inspect", str(path), "--json")
    assert status != 0
    assert out == ""
    assert err.startswith("dreamlab inspect: error: ")
    assert str(path) in err
    for word in words:
        assert word in err


def test_generate_rejects_bad_input_without_a_traceback(capsys, demo_models_dir: Path, tmp_path: Path) -> None:
    status, _, err = _run(capsys, "generate", "--checkpoint", str(demo_models_dir / "tiny-sd1"), "--prompt", "x",
                          "--width", "65", "--output", str(tmp_path / "x.png"))
    assert status != 0 and "`width`" in err and "65" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
    status, _, err = _run(capsys, "generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x")
    assert status != 0 and "does not exist" in err


# -- generate --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sd1.safetensors"])
def test_generate_writes_a_png(capsys, demo_models_dir: Path, tmp_path: Path, name: str) -> None:
    out_path = tmp_path / "out.png"
    status, out, err = _run(capsys, "generate", "--checkpoint", str(demo_models_dir / name), "--prompt",
                            "a small house", "--width", "48", "--height", "64", "--steps", "2", "--seed", "5",
                            "--output", str(out_path))
    assert status == 0, err
    data = out_path.read_bytes()
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.size == (48, 64)
    assert str(out_path) in out and "48x64" in out and "seed 5" in out


def test_generate_same_seed_same_bytes(capsys, demo_models_dir: Path, tmp_path: Path) -> None:
    files = []
    for i, seed in enumerate(("11", "11", "12")):
        path = tmp_path / f"img{i}.png"
        status, _, err = _run(capsys, "generate", "--checkpoint", str(demo_models_dir / "tiny-sd1"), "--prompt",
                              "a tree", "--steps", "2", "--seed", seed, "--output", str(path))
        assert status == 0, err
        files.append(path.read_bytes())
    assert files[0] == files[1]
    assert files[0] != files[2]
    assert Image.open(io.BytesIO(files[0])).size == (64, 64)  # the CLI's default size


def test_generate_img2img_on_the_refiner(capsys, demo_models_dir: Path, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 48), (10, 120, 200)).save(init)
    out_path = tmp_path / "refined.png"
    status, _, err = _run(capsys, "generate", "--checkpoint", str(demo_models_dir / "tiny-sdxl-refiner.safetensors"),
                          "--prompt", "sharper", "--image", str(init), "--strength", "0.5", "--steps", "2",
                          "--output", str(out_path))
    assert status == 0, err
    assert Image.open(out_path).size == (64, 48)
    # and txt2img on the refiner is refused with a message, not a crash
    status, _, err = _run(capsys, "generate", "--checkpoint", str(demo_models_dir / "tiny-sdxl-refiner"),
                          "--prompt", "a cat", "--output", str(tmp_path / "no.png"))
    assert status != 0 and "img2img" in err


# -- the installed console script ------------------------------------------------------------------------

def test_console_script_entry_point(demo_models_dir: Path) -> None:
    exe = shutil.which("dreamlab", path=str(Path(sys.executable).parent)) or shutil.which("dreamlab")
    assert exe is not None, "the `dreamlab` console script is not installed (pip install -e .)"
    path = demo_models_dir / "tiny-sdxl.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([exe, "inspect", str(path), "--json"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["family"] == "sdxl" and report["cross_attention_dim"] == 2048
    assert report["path"] == str(path.resolve())
    bad = subprocess.run([exe, "inspect", str(path.parent / "missing.safetensors")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and bad.stdout == ""
