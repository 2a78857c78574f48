"""Checkpoint inspection: what every demo checkpoint is, and typed errors for everything that is not one.

Inspection reads metadata only (a diffusers folder's JSON configs, a safetensors file's header), so these
tests are fast; the odd inputs (corrupt headers, pickles, unsupported widths, inpainting) are crafted here
as tiny files.
"""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serve_app.core.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NotACheckpointError,
    PickleCheckpointError,
    UnsupportedCheckpointError,
)
from serve_app.model.demo.architectures import demo_name
from serve_app.model.families import FAMILY_BY_CROSS_ATTENTION_DIM, UNET_FAMILIES, Family
from serve_app.model.inspection.checkpoint_inspect import CheckpointFormat, inspect_checkpoint, is_checkpoint_candidate

EXPECTED_DIM = {Family.SD1: 768, Family.SD2: 1024, Family.SDXL: 2048, Family.SDXL_REFINER: 1280}
UNET = "model.diffusion_model."

families = pytest.mark.parametrize("family", list(UNET_FAMILIES), ids=lambda f: f.value)


def _folder(root: Path, family: Family) -> Path:
    return root / demo_name(family)


def _single(root: Path, family: Family) -> Path:
    return root / f"{demo_name(family)}.safetensors"


def _stored_param_count(files: list[Path]) -> int:
    """Parameters counted by actually opening the tensors (independent of the header arithmetic)."""
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not iterable)
                total += math.prod(fh.get_slice(key).get_shape())
    return total


def _crafted_single_file(path: Path, *, cross_attention_dim: int = 768, in_channels: int = 4,
                         base_channels: int = 32, dtype: torch.dtype = torch.float16) -> Path:
    """A minimal original-layout file: just the tensors inspection looks at, with the given shapes."""
    tensors = {
        UNET + "input_blocks.0.0.weight": torch.zeros(base_channels, in_channels, 3, 3, dtype=dtype),
        UNET + "input_blocks.0.0.bias": torch.zeros(base_channels, dtype=dtype),
        UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
            torch.zeros(base_channels, cross_attention_dim, dtype=dtype),
        UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight":
            torch.zeros(base_channels, cross_attention_dim, dtype=dtype),
        "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 16, 3, 3, dtype=dtype),
    }
    save_file(tensors, str(path), metadata={"note": "crafted by the test"})
    return path


# -- the demo checkpoints --------------------------------------------------------------------------------

@families
@pytest.mark.parametrize("fmt", ["folder", "single"])
def test_demo_checkpoint_is_detected(demo_models_dir: Path, family: Family, fmt: str) -> None:
    path = _folder(demo_models_dir, family) if fmt == "folder" else _single(demo_models_dir, family)
    info = inspect_checkpoint(path)

    assert info.path == str(path.resolve())
    assert info.format is (CheckpointFormat.DIFFUSERS if fmt == "folder" else CheckpointFormat.SINGLE_FILE)
    assert info.family is family
    assert info.cross_attention_dim == EXPECTED_DIM[family]
    assert FAMILY_BY_CROSS_ATTENTION_DIM[info.cross_attention_dim] is family
    assert info.inpainting is False and info.unet_in_channels == 4
    # save_pretrained keeps the fp32 of the random init; the single-file writer stores fp16 (as shared files are)
    assert info.dtype == ("float32" if fmt == "folder" else "float16")
    on_disk = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    assert info.file_bytes == sum(f.stat().st_size for f in on_disk)
    assert 0 < info.param_bytes < info.file_bytes
    assert info.param_bytes == info.param_count * (4 if fmt == "folder" else 2)
    assert info.unet_base_channels == 32  # the demo UNets' first level
    assert is_checkpoint_candidate(path)


@families
def test_folder_and_single_file_hold_the_same_parameters(demo_models_dir: Path, family: Family) -> None:
    folder = inspect_checkpoint(_folder(demo_models_dir, family))
    single = inspect_checkpoint(_single(demo_models_dir, family))
    assert folder.param_count == single.param_count
    assert folder.param_bytes == 2 * single.param_bytes  # fp32 folder, fp16 file
    assert folder.vae_decoder_channels == single.vae_decoder_channels
    assert folder.unet_base_channels == single.unet_base_channels
    # the header arithmetic agrees with the tensors really stored
    folder_files = sorted(_folder(demo_models_dir, family).rglob("*.safetensors"))
    assert _stored_param_count(folder_files) == folder.param_count
    assert _stored_param_count([_single(demo_models_dir, family)]) == single.param_count


def test_single_file_metadata_is_read(demo_models_dir: Path) -> None:
    info = inspect_checkpoint(_single(demo_models_dir, Family.SDXL))
    assert info.metadata.get("dreamlab.family") == "sdxl"
    assert "dreamlab.diffusers_config" in info.metadata


# -- typed errors that name the path --------------------------------------------------------------------

def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(CheckpointNotFoundError) as err:
        inspect_checkpoint(missing)
    assert str(missing) in err.value.message
    assert "does not exist" in err.value.message
    assert err.value.param == "checkpoint" and err.value.status_code == 404


def test_random_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(NotACheckpointError) as err:
        inspect_checkpoint(notes)
    assert str(notes) in err.value.message and ".txt" in err.value.message
    assert not is_checkpoint_candidate(notes)


def test_random_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(NotACheckpointError) as err:
        inspect_checkpoint(folder)
    assert str(folder) in err.value.message and "model_index.json" in err.value.message
    assert not is_checkpoint_candidate(folder)


def test_safetensors_without_a_unet_is_not_a_checkpoint(tmp_path: Path) -> None:
    """A LoRA/VAE/embedding file is valid safetensors but cannot be served as a mode."""
    lora = tmp_path / "style-lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    with pytest.raises(NotACheckpointError) as err:
        inspect_checkpoint(lora)
    assert str(lora) in err.value.message and UNET in err.value.message


def test_garbage_bytes_are_a_corrupt_header(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CorruptCheckpointError) as err:
        inspect_checkpoint(path)
    assert str(path) in err.value.message and "corrupt" in err.value.message


def test_header_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "notjson.safetensors"
    path.write_bytes(struct.pack("<Q", 16) + b"\x00\x01not json at all" + b"\x00" * 64)
    with pytest.raises(CorruptCheckpointError) as err:
        inspect_checkpoint(path)
    assert str(path) in err.value.message and "JSON" in err.value.message


def test_file_shorter_than_the_length_prefix(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CorruptCheckpointError) as err:
        inspect_checkpoint(path)
    assert str(path) in err.value.message and "3 bytes" in err.value.message


def test_header_length_larger_than_file(tmp_path: Path) -> None:
    path = tmp_path / "liar.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
    with pytest.raises(CorruptCheckpointError) as err:
        inspect_checkpoint(path)
    msg = err.value.message
    assert str(path) in msg and "10000" in msg and str(path.stat().st_size) in msg


def test_bad_tensor_entry_in_header(tmp_path: Path) -> None:
    header = json.dumps({UNET + "x.weight": {"dtype": "F16", "shape": "wide"}}).encode()
    path = tmp_path / "badentry.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CorruptCheckpointError) as err:
        inspect_checkpoint(path)
    assert str(path) in err.value.message and "x.weight" in err.value.message


def test_truncated_data_region(demo_models_dir: Path, tmp_path: Path) -> None:
    """A download cut short: the header is intact, the tensor data is not all there."""
    original = _single(demo_models_dir, Family.SD1).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(original[: len(original) // 2])
    with pytest.raises(CorruptCheckpointError) as err:
        inspect_checkpoint(cut)
    msg = err.value.message
    assert str(cut) in msg and "truncated" in msg
    header_len = struct.unpack("<Q", original[:8])[0]
    assert str(len(original) // 2 - 8 - header_len) in msg  # the bytes that do follow the header


def test_truncated_weight_file_inside_a_folder(demo_models_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "broken-sd1"
    shutil.copytree(_folder(demo_models_dir, Family.SD1), folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CorruptCheckpointError) as err:
        inspect_checkpoint(folder)
    assert str(weights) in err.value.message


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_checkpoints_are_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": {UNET + "input_blocks.0.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(PickleCheckpointError) as err:
        inspect_checkpoint(path)
    msg = err.value.message
    assert str(path) in msg
    assert "arbitrary code" in msg
    assert "safetensors" in msg and "save_file" in msg  # says how to convert


def test_folder_with_pickle_weights_is_refused(tmp_path: Path, demo_models_dir: Path) -> None:
    import shutil

    folder = tmp_path / "old-diffusers"
    shutil.copytree(_folder(demo_models_dir, Family.SD1), folder)
    unet_weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet_weights.unlink()
    torch.save({}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(PickleCheckpointError) as err:
        inspect_checkpoint(folder)
    assert "diffusion_pytorch_model.bin" in err.value.message and "arbitrary code" in err.value.message


def test_unsupported_cross_attention_dim(tmp_path: Path) -> None:
    path = _crafted_single_file(tmp_path / "odd.safetensors", cross_attention_dim=512)
    with pytest.raises(UnsupportedCheckpointError) as err:
        inspect_checkpoint(path)
    msg = err.value.message
    assert str(path) in msg and "512" in msg
    for dim, family in FAMILY_BY_CROSS_ATTENTION_DIM.items():
        assert str(dim) in msg and family.value in msg


def test_unsupported_cross_attention_dim_in_folder(tmp_path: Path) -> None:
    folder = tmp_path / "odd-folder"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 512, "in_channels": 4}))
    with pytest.raises(UnsupportedCheckpointError) as err:
        inspect_checkpoint(folder)
    assert "512" in err.value.message and str(folder) in err.value.message


@pytest.mark.parametrize("dim", sorted(FAMILY_BY_CROSS_ATTENTION_DIM))
def test_crafted_header_family_follows_the_dim_not_the_name(tmp_path: Path, dim: int) -> None:
    path = _crafted_single_file(tmp_path / "sd15-definitely.safetensors", cross_attention_dim=dim)
    info = inspect_checkpoint(path)
    assert info.family is FAMILY_BY_CROSS_ATTENTION_DIM[dim]
    assert info.cross_attention_dim == dim
    assert info.metadata == {"note": "crafted by the test"}


def test_inpainting_single_file(tmp_path: Path) -> None:
    path = _crafted_single_file(tmp_path / "inpaint.safetensors", in_channels=9)
    info = inspect_checkpoint(path)
    assert info.inpainting is True and info.unet_in_channels == 9
    assert info.family is Family.SD1
    plain = inspect_checkpoint(_crafted_single_file(tmp_path / "plain.safetensors", in_channels=4))
    assert plain.inpainting is False


def test_inpainting_folder(tmp_path: Path, demo_models_dir: Path) -> None:
    import shutil

    folder = tmp_path / "inpaint-sd2"
    shutil.copytree(_folder(demo_models_dir, Family.SD2), folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["in_channels"] = 9
    config_path.write_text(json.dumps(config))
    info = inspect_checkpoint(folder)
    assert info.inpainting is True and info.unet_in_channels == 9 and info.family is Family.SD2


def test_dtype_is_the_dominant_unet_dtype(tmp_path: Path) -> None:
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32), ("float16", torch.float16)):
        assert inspect_checkpoint(_crafted_single_file(tmp_path / f"{name}.safetensors", dtype=dtype)).dtype == name

