"""Embeddings and VAE overrides applied by the runner on the real tiny pipelines: each changes the image, a
request without them gets the checkpoint's own image afterwards, loaded files are reused, and a file that
cannot be used fails that request only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serve_app.api.adapter_catalog import AdapterCatalog
from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.core.errors import AdapterFileError, RequestValidationError, UnknownAdapterError
from serve_app.model.demo.architectures import vae_config
from serve_app.model.families import Family
from serve_app.model.generation.runner import ModelRunner
from tests.unit.runner_helpers import mode_for, pixels


@pytest.fixture(scope="module")
def models(demo_models_dir: Path, tmp_path_factory) -> Path:
    """The demo checkpoints and adapters, plus a VAE of another architecture and one more embedding."""
    from diffusers import AutoencoderKL

    from serve_app.model.demo.demo_adapters import write_demo_adapters

    root = tmp_path_factory.mktemp("adapters")
    for name in ("tiny-sd1", "tiny-sdxl"):
        shutil.copytree(demo_models_dir / name, root / name)
    write_demo_adapters(root)
    wide = AutoencoderKL(**(vae_config(Family.SD1) | dict(block_out_channels=(16, 16, 32, 32))))
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(root / "vae" / "wide-vae.safetensors"))
    save_file({"emb_params": torch.randn(1, 768)}, str(root / "embeddings" / "broken-emb.safetensors"))
    return root


def _runner(models: Path, name: str) -> ModelRunner:
    runner = ModelRunner(mode_for(models / name, vaes=["tiny-vae", "wide-vae"]), models / name,
                         device=torch.device("cpu"))
    runner.load()
    return runner


def _generate(runner: ModelRunner, catalog: AdapterCatalog, prompt: str = "a red fox", **fields) -> bytes:
    request = resolve_request(Txt2ImgRequest(prompt=prompt, seed=5, **fields), runner.mode, runner.family,
                              adapters=catalog)
    return pixels(runner.generate(request).images[0].data)


@pytest.mark.parametrize("checkpoint,embedding", [("tiny-sd1", "tiny-sd1-embedding"),
                                                  ("tiny-sdxl", "tiny-sdxl-embedding")])
def test_an_embedding_named_in_a_prompt_is_used_and_leaves_nothing_behind(models: Path, checkpoint: str,
                                                                          embedding: str) -> None:
    catalog = AdapterCatalog(models)
    runner = _runner(models, checkpoint)
    plain = _generate(runner, catalog)
    used = _generate(runner, catalog, f"a red fox, {embedding.upper()}")  # any case, as the tokenizer matches
    assert used != plain
    assert runner.embeddings.loads == 1
    assert _generate(runner, catalog) == plain  # a prompt without it: the checkpoint's own image
    assert _generate(runner, catalog, f"a red fox, {embedding}") == used  # reused, not loaded again
    assert runner.embeddings.loads == 1
    fresh = _runner(models, checkpoint)
    assert _generate(fresh, catalog, f"a red fox, {embedding}") == used  # the same image as on a fresh replica
    runner.unload()
    fresh.unload()


def test_embeddings_resolve_by_family_and_in_the_negative_prompt(models: Path) -> None:
    catalog = AdapterCatalog(models)
    mode = mode_for(models / "tiny-sd1")
    request = resolve_request(Txt2ImgRequest(prompt="a cat tiny-sdxl-embedding", negative_prompt="tiny-sd1-embedding"),
                              mode, Family.SD1, adapters=catalog)
    assert [e.name for e in request.embeddings] == ["tiny-sd1-embedding"]  # the SDXL one stays plain text


def test_a_vae_override_changes_the_image_and_is_put_back(models: Path) -> None:
    catalog = AdapterCatalog(models)
    runner = _runner(models, "tiny-sd1")
    own_vae = runner.pipelines().base.vae
    plain = _generate(runner, catalog)
    swapped = _generate(runner, catalog, vae="tiny-vae")
    assert swapped != plain
    assert _generate(runner, catalog) == plain and runner.pipelines().base.vae is own_vae
    assert _generate(runner, catalog, vae="tiny-vae") == swapped and runner.vaes.loads == 1
    assert runner.adapter_bytes() >= sum(p.numel() * 4 for p in next(iter(runner.vaes.held.values())).parameters())
    with pytest.raises(AdapterFileError, match="wide-vae.*does not fit"):
        _generate(runner, catalog, vae="wide-vae")
    assert _generate(runner, catalog) == plain  # the failed request changed nothing
    runner.offload()  # only the checkpoint's own modules go to the RAM tier
    assert runner.vaes.held == {}
    runner.load()
    assert runner.pipelines().base.vae is own_vae
    assert _generate(runner, catalog) == plain
    runner.unload()


def test_vae_and_embedding_errors(models: Path) -> None:
    catalog = AdapterCatalog(models)
    mode = mode_for(models / "tiny-sd1", vaes=["tiny-vae", "gone-vae"])
    with pytest.raises(RequestValidationError, match="'other' is not a VAE of mode .*allows: tiny-vae, gone-vae"):
        resolve_request(Txt2ImgRequest(prompt="x", vae="other"), mode, Family.SD1, adapters=catalog)
    with pytest.raises(UnknownAdapterError, match="'gone-vae' not found.*tiny-vae"):
        resolve_request(Txt2ImgRequest(prompt="x", vae="gone-vae"), mode, Family.SD1, adapters=catalog)
    runner = _runner(models, "tiny-sd1")
    plain = _generate(runner, catalog)
    path = models / "embeddings" / "broken-emb.safetensors"
    path.write_bytes(path.read_bytes()[:-100])  # broken after it was listed: the header promises more data
    with pytest.raises(AdapterFileError, match="broken-emb"):
        _generate(runner, catalog, "a red fox broken-emb")
    assert _generate(runner, catalog) == plain
    runner.unload()
