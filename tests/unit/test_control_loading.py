"""ControlNets load offline in every layout (a diffusers folder, a diffusers-keyed file, an original-layout
file converted by diffusers' own converter) and give the same weights; the per-replica cache keeps them within
its bytes (least recently used out, the request's own kept) and the control modes weight the residuals as A1111
does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from serve_app.model.adapters.control_set import ControlSet, apply_mode, load_controlnet, soft_weights
from serve_app.model.demo.demo_controlnets import write_demo_controlnets
from serve_app.model.generation.job import ControlUse
from serve_app.model.inspection.adapter_inspect import AdapterFormat, AdapterKind, inspect_adapter

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cn")
    write_demo_controlnets(root)
    return root


def _use(root: Path, name: str) -> ControlUse:
    info = inspect_adapter(root / "controlnet" / name, AdapterKind.CONTROLNET)
    return ControlUse(name=info.name, path=info.path, file_bytes=info.file_bytes, parameters=info.parameters or 0,
                      image=Image.new("RGB", (8, 8)))


def test_every_layout_loads_the_same_weights(root: Path) -> None:
    original = inspect_adapter(root / "controlnet" / "tiny-sd1-controlnet-original.safetensors",
                               AdapterKind.CONTROLNET)
    assert original.format is AdapterFormat.ORIGINAL
    folder = load_controlnet(_use(root, "tiny-sd1-controlnet"), torch.float32, CPU).state_dict()
    single = load_controlnet(_use(root, "tiny-sd1-controlnet-original.safetensors"), torch.float32, CPU).state_dict()
    assert folder.keys() == single.keys() and all(torch.equal(folder[k], single[k]) for k in folder)
    sdxl = load_controlnet(_use(root, "tiny-sdxl-controlnet.safetensors"), torch.float16, CPU)
    assert next(sdxl.parameters()).dtype == torch.float16


def test_the_cache_keeps_its_bytes_and_the_requests_own(root: Path) -> None:
    a, b = _use(root, "tiny-sd1-controlnet"), _use(root, "tiny-sdxl-controlnet.safetensors")
    cache = ControlSet(max_bytes=a.parameters * 4 + 1, dtype=torch.float32, device=CPU)
    assert cache.missing_bytes([a, a]) == a.parameters * 4
    cache.models([a], cfg=True)
    assert cache.bytes == a.parameters * 4 and cache.missing_bytes([a]) == 0 and cache.loads == 1
    cache.models([a], cfg=True)
    assert cache.loads == 1  # held: not read again
    cache.models([b], cfg=False)  # over the budget: `a` goes
    assert list(cache.loaded) == [b.file_key] and cache.loads == 2
    cache.models([a, b], cfg=False)  # both asked for: both kept, even past the budget
    assert len(cache.loaded) == 2


def test_control_modes_weight_the_residuals() -> None:
    down, mid = [torch.ones(2, 1) for _ in range(3)], torch.ones(2, 1)
    assert apply_mode("balanced", True, down, mid) == (down, mid)
    soft, soft_mid = apply_mode("prompt", True, down, mid)
    assert [float(r[0, 0]) for r in [*soft, soft_mid]] == pytest.approx(soft_weights(4))
    assert soft_weights(4)[-1] == 1.0 and soft_weights(4)[0] == pytest.approx(0.825**3)
    _, strong_mid = apply_mode("control", True, down, mid)
    assert float(strong_mid[0, 0]) == 0 and float(strong_mid[1, 0]) == 1  # the unconditional half: none
    alone, _ = apply_mode("control", False, down, mid)  # no CFG batch: nothing to split
    assert float(alone[0][0, 0]) == pytest.approx(0.825**3)


def test_an_image_encoder_loads_from_a_folder_and_from_a_single_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from serve_app.model.adapters.ipadapter_set import _load_encoder
    from serve_app.model.demo.demo_ipadapters import demo_image_encoder, demo_ipadapter_paths, write_demo_ipadapters

    write_demo_ipadapters(tmp_path)
    folder = _load_encoder(demo_ipadapter_paths(tmp_path)[1], torch.float32, CPU)
    expected = demo_image_encoder().state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in folder.state_dict().items())
    single = tmp_path / "clip_vision" / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in expected.items()}, str(single))
    loaded = _load_encoder(single, torch.float16, CPU)
    config = loaded.config
    assert (config.hidden_size, config.projection_dim, config.image_size, config.patch_size,
            config.num_hidden_layers, config.intermediate_size) == (32, 32, 32, 8, 2, 37)
    assert next(loaded.parameters()).dtype == torch.float16


def test_a_model_used_by_two_units_takes_their_modes_in_turn(root: Path) -> None:
    from dataclasses import replace

    from serve_app.model.adapters.control_set import _mode_hook

    a = _use(root, "tiny-sd1-controlnet")
    cache = ControlSet(max_bytes=2**30, dtype=torch.float32, device=CPU)
    first, second = cache.models([replace(a, mode="prompt"), replace(a, mode="balanced")], cfg=False)
    assert first is second
    output = ([torch.ones(1, 1), torch.ones(1, 1)], torch.ones(1, 1))
    per_call = [float(_mode_hook(first, (), {}, output)[0][0][0, 0]) for _ in range(4)]
    assert per_call == pytest.approx([0.825**2, 1.0, 0.825**2, 1.0])  # unit 0 (prompt), unit 1, next step ...
