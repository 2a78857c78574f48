"""ControlNet files inspected from their headers: the demo ones (a diffusers folder, a diffusers-keyed single
file), the original (A1111) layout, the family from the cross-attention width, and clear problems for what
is not a served ControlNet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serve_app.core.errors import AdapterFileError
from serve_app.model.demo.demo_controlnets import write_demo_controlnets
from serve_app.model.families import Family
from serve_app.model.inspection.adapter_inspect import AdapterFormat, AdapterKind, discover_adapters, inspect_adapter


def _file(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in shapes.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("controlnets")
    write_demo_controlnets(root)
    return root


def test_the_demo_controlnets_are_recognised(demo_root: Path) -> None:
    found, problems = discover_adapters(demo_root)
    assert problems == []
    nets = {a.name: a for a in found}
    sd1, sdxl = nets["tiny-sd1-controlnet"], nets["tiny-sdxl-controlnet"]
    assert (sd1.kind, sd1.family, sd1.format) == (AdapterKind.CONTROLNET, Family.SD1, AdapterFormat.DIFFUSERS)
    assert (sdxl.kind, sdxl.family, sdxl.format) == (AdapterKind.CONTROLNET, Family.SDXL, AdapterFormat.DIFFUSERS)
    assert Path(sd1.path).is_dir() and sd1.parameters and sd1.parameters * 4 <= sd1.file_bytes


@pytest.mark.parametrize(("prefix", "dim", "family"), [("control_model.", 768, Family.SD1), ("", 1024, Family.SD2)])
def test_the_original_layout_and_its_family(tmp_path: Path, prefix: str, dim: int, family: Family) -> None:
    path = _file(tmp_path / "control_v11p_canny.safetensors", {
        f"{prefix}input_hint_block.0.weight": (16, 3, 3, 3),
        f"{prefix}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, dim),
        f"{prefix}zero_convs.0.0.weight": (320, 320, 1, 1)})
    info = inspect_adapter(path, AdapterKind.CONTROLNET)
    assert (info.family, info.format, info.parameters) == (family, AdapterFormat.ORIGINAL, 16 * 27 + 320 * dim + 320**2)


def test_what_is_not_a_served_controlnet_is_a_problem_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _file(root / "controlnet" / "a-lora.safetensors", {"lora_unet_x.lora_down.weight": (4, 768)})
    _file(root / "controlnet" / "refiner.safetensors", {
        "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (640, 1280)})
    _file(root / "controlnet" / "no-attention.safetensors", {"controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3)})
    (root / "controlnet" / "empty-folder").mkdir()
    (root / "controlnet" / "old.pth").write_bytes(b"\x80\x02")
    found, problems = discover_adapters(root)
    assert found == []
    why = {Path(p.path).name: p.error for p in problems}
    assert "not a ControlNet" in why["a-lora.safetensors"] and "Control-LoRA" in why["a-lora.safetensors"]
    assert "1280" in why["refiner.safetensors"] and "2048 (sdxl)" in why["refiner.safetensors"]
    assert "cannot be told" in why["no-attention.safetensors"]
    assert "config.json" in why["empty-folder"] and "pickle" in why["old.pth"].lower()
    with pytest.raises(AdapterFileError, match="a-lora"):
        inspect_adapter(root / "controlnet" / "a-lora.safetensors", AdapterKind.CONTROLNET)


def test_ip_adapters_and_image_encoders_are_recognised(tmp_path: Path) -> None:
    from serve_app.model.demo.demo_ipadapters import write_demo_ipadapters

    write_demo_ipadapters(tmp_path)
    _file(tmp_path / "ipadapter" / "faceid.safetensors", {"image_proj.proj.0.weight": (4, 4),
                                                          "ip_adapter.1.to_k_ip.weight": (64, 768)})
    found, problems = discover_adapters(tmp_path)
    by_name = {a.name: a for a in found}
    ip, encoder = by_name["tiny-sd1-ipadapter"], by_name["tiny-clip-vision"]
    assert (ip.kind, ip.family, ip.embed_dim, ip.hidden_dim) == (AdapterKind.IPADAPTER, Family.SD1, 32, None)
    assert (encoder.kind, encoder.family, encoder.embed_dim, encoder.hidden_dim) == (
        AdapterKind.CLIP_VISION, None, 32, 32)
    assert [Path(p.path).name for p in problems] == ["faceid.safetensors"] and "not served" in problems[0].error
