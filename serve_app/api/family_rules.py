"""What a request may ask of a mode's family, checked before the queue: what cannot apply to a family is
a 422 naming the field and the family, never silently ignored.

- clip skip (> 1) needs CLIP hidden states as the denoiser's context: not SD3 / FLUX (T5);
- FLUX.1 dev/schnell have their guidance embedded: a negative prompt needs true CFG (`true_cfg_scale` > 1),
  which only FLUX takes (FLUX.1 Fill's pipeline has none);
- prompt weighting on SD3 / FLUX: see `flow_prompts`;
- a hires fix on SD3 / FLUX upscales pixels (their latents are packed), so latent upscalers are refused;
- FLUX.1 Fill inpaints the whole image (its pipeline has no `inpaint_full_res` crop);
- textual-inversion embeddings are CLIP token vectors of one family: one of another family named in an SD3 /
  FLUX prompt is refused, naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote
from serve_app.model.families import Family
from serve_app.model.generation.job import LATENT_UPSCALERS
from serve_app.model.inspection.adapter_inspect import AdapterKind
from serve_app.model.prompts.flow_prompts import flow_prompt_text

if TYPE_CHECKING:
    from serve_app.api.adapter_catalog import AdapterCatalog
    from serve_app.api.schemas.native import Txt2ImgRequest
    from serve_app.config.modes_file import ModeConfig


def check_family_request(req: Txt2ImgRequest, mode: ModeConfig, family: Family, variant: str, negative_prompt: str,
                         adapters: AdapterCatalog, name: Callable[[str], str]) -> None:
    """Raise for what `req` asks that `family` (`variant`) cannot do."""
    if req.true_cfg_scale is not None and (family is not Family.FLUX or variant == "flux-fill"):
        raise RequestValidationError(f"`{name('true_cfg_scale')}` applies to FLUX.1 dev/schnell only; mode "
                                     f"{mode.name!r} is {variant or family.value}", param=name("true_cfg_scale"))
    if req.true_cfg_scale is not None and not 1.0 < req.true_cfg_scale <= 50.0:
        raise RequestValidationError(f"`{name('true_cfg_scale')}` must be in (1, 50], got "
                                     f"{quote(req.true_cfg_scale)}", param=name("true_cfg_scale"))
    if not family.flow:
        return
    if req.clip_skip is not None and req.clip_skip > 1:
        raise RequestValidationError(f"`{name('clip_skip')}` {req.clip_skip} does not apply to mode {mode.name!r} "
                                     f"({family.value}): its prompts are read by T5, not by CLIP layers; leave it at 1",
                                     param=name("clip_skip"))
    if family is Family.FLUX and negative_prompt.strip() and req.true_cfg_scale is None:
        raise RequestValidationError(
            f"`{name('negative_prompt')}` {quote(negative_prompt)}: mode {mode.name!r} is {variant or 'flux'}, whose "
            f"guidance is embedded and takes no negative prompt; send `{name('true_cfg_scale')}` > 1 for true CFG "
            "(twice the cost) or leave the negative prompt out", param=name("negative_prompt"))
    flow_prompt_text(req.prompt, mode.prompt_syntax, family, name("prompt"))
    if req.hires is not None and req.hires.upscaler in LATENT_UPSCALERS:
        raise RequestValidationError(f"`{name('hires.upscaler')}` {req.hires.upscaler!r}: {family.value} latents are "
                                     "not upscaled in latent space here; use lanczos or nearest",
                                     param=name("hires.upscaler"))
    if variant == "flux-fill" and getattr(req, "inpaint_full_res", False):
        raise RequestValidationError(f"`{name('inpaint_full_res')}`: FLUX.1 Fill inpaints the whole image; "
                                     "leave it off", param=name("inpaint_full_res"))
    text = f"{req.prompt} {negative_prompt}".lower()
    for embedding in adapters.of_kind(AdapterKind.EMBEDDING):
        if embedding.name.lower() in text and not any(c.isspace() for c in embedding.name):
            made_for = embedding.family.value if embedding.family else "another family"
            raise RequestValidationError(
                f"`{name('prompt')}` names the embedding {quote(embedding.name)}, made for {made_for}; mode "
                f"{mode.name!r} is {family.value}, which takes no textual-inversion embeddings", param=name("prompt"))
