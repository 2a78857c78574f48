"""Prompt encoding on the real tiny pipelines: a plain short prompt gives exactly diffusers' embeddings (so the
same image as before), emphasis, a long prompt's later tokens and clip skip each change the result, and the
prompt and negative prompt always line up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from serve_app.api.request_resolution import resolve_request
from serve_app.api.schemas.native import Txt2ImgRequest
from serve_app.config.modes_file import ModeConfig, ModeDefaults, ModeLimits
from serve_app.model.families import Family
from serve_app.model.generation.runner import ModelRunner
from serve_app.model.prompts.encoding import chunk_count, encode_prompts
from tests.unit.runner_helpers import pixels

FAMILIES = {"tiny-sd1": Family.SD1, "tiny-sd2": Family.SD2, "tiny-sdxl": Family.SDXL}
LONG = " ".join(f"w{i % 10}x" for i in range(120))  # byte-level tokenizer: 3 tokens a word, 360 tokens


@pytest.fixture(scope="module")
def runner_for(demo_models_dir: Path) -> Iterator[Callable[[str], ModelRunner]]:
    cache: dict[str, ModelRunner] = {}

    def get(name: str) -> ModelRunner:
        if name not in cache:
            mode = ModeConfig(name=name, checkpoint=str(demo_models_dir / name), scheduler="euler",
                              defaults=ModeDefaults(width=64, height=64, steps=2, guidance_scale=5.0),
                              limits=ModeLimits(max_width=256, max_height=256, max_steps=50, max_num_images=4))
            cache[name] = ModelRunner(mode, demo_models_dir / name, device=torch.device("cpu"))
            cache[name].load()
        return cache[name]

    yield get
    for runner in cache.values():
        runner.unload()


def _image(runner: ModelRunner, prompt: str, negative: str = "", **fields) -> bytes:
    req = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, seed=3, **fields)
    return pixels(runner.generate(resolve_request(req, runner.mode, runner.family)).images[0].data)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_plain_short_prompt_gives_exactly_diffusers_embeddings(runner_for, name: str) -> None:
    pipe, family = runner_for(name).pipelines().txt2img, FAMILIES[name]
    ours = encode_prompts(pipe, family, "a red fox, snow", "blurry")
    if family is Family.SDXL:
        theirs = pipe.encode_prompt("a red fox, snow", negative_prompt="blurry", device="cpu",
                                    num_images_per_prompt=1, do_classifier_free_guidance=True)
        mine = (ours.prompt_embeds, ours.negative_prompt_embeds, ours.pooled_prompt_embeds,
                ours.negative_pooled_prompt_embeds)
    else:
        theirs = pipe.encode_prompt("a red fox, snow", "cpu", 1, True, negative_prompt="blurry")
        mine = (ours.prompt_embeds, ours.negative_prompt_embeds)
    for a, b in zip(mine, theirs, strict=True):
        assert a is not None and torch.equal(a, b)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_emphasis_changes_the_embedding_and_keeps_its_mean(runner_for, name: str) -> None:
    pipe, family = runner_for(name).pipelines().txt2img, FAMILIES[name]
    plain = encode_prompts(pipe, family, "a cat", "").prompt_embeds
    weighted = encode_prompts(pipe, family, "a (cat:1.5)", "").prompt_embeds
    assert not torch.allclose(plain, weighted)
    widths = [768] if family is Family.SDXL else []  # (SDXL: each encoder keeps its own mean)
    sizes = [*widths, plain.shape[-1] - sum(widths)]
    for part_p, part_w in zip(plain.split(sizes, dim=-1), weighted.split(sizes, dim=-1), strict=True):
        assert part_w.mean().item() == pytest.approx(part_p.mean().item(), rel=1e-4, abs=1e-6)
    assert torch.equal(encode_prompts(pipe, family, "a (cat:1)", "").prompt_embeds, plain)
    assert torch.equal(encode_prompts(pipe, family, "a \\(cat\\)", "").prompt_embeds,
                       encode_prompts(pipe, family, "a (cat)", "", syntax="plain").prompt_embeds)


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl"])
def test_emphasis_and_a_late_token_change_the_image(runner_for, name: str) -> None:
    runner = runner_for(name)
    plain = _image(runner, "a red fox")
    assert _image(runner, "a (red:1.5) fox") != plain
    assert _image(runner, "(a red fox:1.0)") == plain  # weight 1: the same image
    changed = LONG[:-2] + "zz"  # differs only in its last word, far beyond token 77
    assert chunk_count(runner.pipelines().txt2img, runner.family, LONG) == 5
    assert _image(runner, changed) != _image(runner, LONG)


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl"])
def test_prompt_and_negative_are_padded_to_the_same_chunks(runner_for, name: str) -> None:
    pipe, family = runner_for(name).pipelines().txt2img, FAMILIES[name]
    long_prompt = encode_prompts(pipe, family, LONG, "ugly")
    long_negative = encode_prompts(pipe, family, "ugly", LONG)
    for e in (long_prompt, long_negative):
        width = pipe.unet.config.cross_attention_dim
        assert e.prompt_embeds.shape == e.negative_prompt_embeds.shape == (1, 77 * 5, width)
    short = encode_prompts(pipe, family, "ugly", "")
    assert torch.equal(long_negative.prompt_embeds[:, :77], short.prompt_embeds)
    if family is Family.SDXL:  # pooled: the first chunk's
        first_chunk = " ".join(LONG.split()[:25])  # 25 words = 75 tokens, exactly the first chunk
        first = encode_prompts(pipe, family, first_chunk, "").pooled_prompt_embeds  # (a batch of 1, not 5:
        assert torch.allclose(long_prompt.pooled_prompt_embeds, first, atol=1e-5)  # the last bits may differ)


def test_clip_skip_picks_an_earlier_layer(runner_for) -> None:
    sd1 = runner_for("tiny-sd1").pipelines().txt2img
    last = encode_prompts(sd1, Family.SD1, "a cat", "").prompt_embeds
    assert not torch.allclose(encode_prompts(sd1, Family.SD1, "a cat", "", clip_skip=2).prompt_embeds, last)
    sdxl = runner_for("tiny-sdxl").pipelines().txt2img
    penultimate = encode_prompts(sdxl, Family.SDXL, "a cat", "").prompt_embeds
    assert torch.equal(encode_prompts(sdxl, Family.SDXL, "a cat", "", clip_skip=2).prompt_embeds, penultimate)
    assert not torch.allclose(encode_prompts(sdxl, Family.SDXL, "a cat", "", clip_skip=3).prompt_embeds,
                              penultimate)
    with pytest.raises(ValueError, match="clip_skip must be >= 1, got 0"):
        encode_prompts(sd1, Family.SD1, "a cat", "", clip_skip=0)


def test_an_embedding_named_beyond_the_first_chunk_is_used(runner_for, demo_models_dir: Path) -> None:
    from serve_app.api.adapter_catalog import AdapterCatalog
    from serve_app.model.prompts.attention_syntax import parse_attention
    from serve_app.model.prompts.chunking import chunk_fragments, special_tokens, tokenize_fragments

    runner = runner_for("tiny-sd1")
    prompt = f"{LONG}, (tiny-sd1-embedding:1.2)"
    req = resolve_request(Txt2ImgRequest(prompt=prompt, seed=3), runner.mode, runner.family,
                          adapters=AdapterCatalog(demo_models_dir))
    runner.generate(req)
    pipe = runner.pipelines().txt2img
    vectors = [t for t in pipe.tokenizer.get_vocab() if t.startswith("tiny-sd1-embedding")]
    ids = set(pipe.tokenizer.convert_tokens_to_ids(vectors))
    assert len(ids) == 2  # the demo embedding has two vectors
    chunks = chunk_fragments(tokenize_fragments(parse_attention(prompt), pipe.tokenizer, pipe.maybe_convert_prompt),
                             special_tokens(pipe.tokenizer))
    last = chunks[-1]
    assert len(chunks) == 5 and ids <= set(last.tokens)
    assert {w for t, w in zip(last.tokens, last.weights) if t in ids} == {1.2}
