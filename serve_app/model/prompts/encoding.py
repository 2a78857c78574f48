"""Prompt and negative prompt -> the embeddings a diffusers pipeline takes (`prompt_embeds`, ...).

For every family with CLIP text encoders (SD 1.x, SD 2.x, SDXL base and refiner):
1. the prompt is parsed (`attention_syntax`; the `plain` syntax keeps it literal) and tokenized in 75-token
   chunks (`chunking`), each fragment first expanded by diffusers' `maybe_convert_prompt` so textual
   inversion embeddings named in the prompt work inside any chunk;
2. each chunk goes through each text encoder: SD 1.x/2.x take the last layer (final layer norm included),
   or with clip skip N > 1 the N-th layer from the end, final layer norm applied (A1111's
   `CLIP_stop_at_last_layers`); SDXL takes the penultimate layer of both encoders without the final norm,
   as diffusers and A1111 do, and clip skip N > 2 goes N layers from the end (Forge's reading: clip skip
   1 and 2 are the same on SDXL);
3. A1111's emphasis: the chunk's hidden states are multiplied token by token by their weights, then
   rescaled so the chunk's mean is what it was before (per encoder);
4. the chunks are concatenated along the sequence; the prompt and the negative prompt are padded with
   empty-prompt chunks to the same length (A1111's `pad_cond_uncond`). SDXL's pooled embedding is the
   second encoder's, from the first chunk, unweighted (as in A1111).
An empty negative prompt is encoded like any text (as A1111 does, and as diffusers does for `""`: its
`force_zeros_for_empty_prompt` applies only to a negative prompt of None, which Dream Lab never sends). A
plain prompt under 75 tokens thus gives exactly the embeddings diffusers would.

Why not `compel`: it was checked (2.x) and does not do the job here. Its syntax is its own (`word++`,
`(words)1.3`), not A1111's; its down-weighting blends with a masked prompt instead of A1111's
multiply-and-restore-mean, so the same prompt would give a different image than A1111/Forge; it has no
`BREAK` nor A1111's comma backtracking when it splits long prompts; and the releases target older
transformers (a fork exists only to follow transformers 5). A thin A1111 layer on top would still give
non-A1111 images, so the few lines of embedding mechanics live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from serve_app.core.errors import RequestValidationError
from serve_app.model.families import Family
from serve_app.model.prompts.attention_syntax import PromptSyntax, parse_attention, plain_fragments
from serve_app.model.prompts.chunking import TokenChunk, chunk_fragments, special_tokens, tokenize_fragments

SDXL_FAMILIES = (Family.SDXL, Family.SDXL_REFINER)


@dataclass
class PromptEmbeddings:
    """What the pipeline is called with instead of `prompt`/`negative_prompt` (one row per image)."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    def call_kwargs(self) -> dict[str, torch.Tensor]:
        """The pipeline's keyword arguments."""
        return {name: value for name, value in vars(self).items() if value is not None}


def _encoders(pipe: Any, family: Family) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs of the pipeline, in the order their hidden states are concatenated."""
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]


def _hidden(encoder: Any, ids: torch.Tensor, family: Family, clip_skip: int) -> tuple[torch.Tensor, Any]:
    """(hidden states of one chunk, the encoder's output) as A1111 reads them for `clip_skip`."""
    layers = encoder.config.num_hidden_layers
    if clip_skip > layers + 1:  # hidden_states: the embeddings' output, then one per layer
        raise RequestValidationError(f"`clip_skip` {clip_skip} is more than this text encoder has layers "
                                     f"({layers}); use 1 to {min(layers, 12)}", param="clip_skip")
    out = encoder(ids, output_hidden_states=True)
    if family in SDXL_FAMILIES:
        return out.hidden_states[-max(clip_skip, 2)], out
    if clip_skip <= 1:
        return out.last_hidden_state, out
    norm = getattr(encoder, "text_model", encoder).final_layer_norm  # (transformers 5 dropped `text_model`)
    return norm(out.hidden_states[-clip_skip]), out


def _weighted(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's emphasis: each row of z (one chunk) times its tokens' weights (rows, 77), rescaled to the row's
    original mean."""
    if bool((weights == 1.0).all()):
        return z
    multipliers = weights.to(device=z.device, dtype=z.dtype).unsqueeze(-1)
    original_mean = z.float().mean(dim=(1, 2), keepdim=True)
    weighted = z * multipliers
    return weighted * (original_mean / weighted.float().mean(dim=(1, 2), keepdim=True)).to(z.dtype)


def _chunks(pipe: Any, tokenizer: Any, text: str, syntax: PromptSyntax) -> list[TokenChunk]:
    fragments = parse_attention(text) if syntax == "a1111" else plain_fragments(text)
    expand = getattr(pipe, "maybe_convert_prompt", None)
    return chunk_fragments(tokenize_fragments(fragments, tokenizer, expand), special_tokens(tokenizer))


def _encode_chunks(pairs: list[tuple[Any, Any]], per_encoder: list[list[TokenChunk]], family: Family,
                   clip_skip: int, images: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states of the chunks concatenated: (images, 77 * chunks, width); pooled or None). Each encoder
    encodes all chunks of all images as one batch."""
    widths: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for (_, encoder), chunks in zip(pairs, per_encoder, strict=True):
        rows = [chunk for chunk in chunks for _ in range(images)]  # chunk-major: chunk 0 of every image first
        ids = torch.tensor([c.tokens for c in rows], dtype=torch.long, device=encoder.device)
        z, out = _hidden(encoder, ids, family, clip_skip)
        if family in SDXL_FAMILIES and encoder is pairs[-1][1]:
            pooled = out[0][:images]  # CLIPTextModelWithProjection's projected embedding, of the first chunk
        z = _weighted(z, torch.tensor([c.weights for c in rows]))
        count, tokens, width = len(chunks), z.shape[1], z.shape[2]
        widths.append(z.reshape(count, images, tokens, width).transpose(0, 1).reshape(images, count * tokens, width))
    return torch.cat(widths, dim=-1), pooled


def chunk_count(pipe: Any, family: Family, text: str, syntax: PromptSyntax = "a1111") -> int:
    """How many 77-token chunks `text` takes (the most of any of the pipeline's tokenizers)."""
    return max(len(_chunks(pipe, tok, text, syntax)) for tok, _ in _encoders(pipe, family))


@torch.no_grad()
def encode_prompts(pipe: Any, family: Family, prompt: str, negative_prompt: str, clip_skip: int = 1,
                   syntax: PromptSyntax = "a1111", images: int = 1) -> PromptEmbeddings:
    """The embeddings of `prompt` and `negative_prompt` for `pipe` (an SD 1.x/2.x/SDXL pipeline), with A1111's
    prompt syntax, long-prompt chunks and clip skip (1 = the last layer), one row for each of `images`.

    The rows are encoded as one batch, as diffusers encodes a list of prompts: the same request gives the same
    bits as diffusers' own encoding (a batch of one repeated would differ in the last float bits)."""
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
    pairs = _encoders(pipe, family)
    positive = [_chunks(pipe, tokenizer, prompt, syntax) for tokenizer, _ in pairs]
    negative = [_chunks(pipe, tokenizer, negative_prompt, syntax) for tokenizer, _ in pairs]
    count = max(len(chunks) for chunks in positive + negative)
    for (tokenizer, _), pos, neg in zip(pairs, positive, negative, strict=True):  # pad with empty-prompt chunks
        empty = _chunks(pipe, tokenizer, "", "plain")[0]
        pos += [empty] * (count - len(pos))
        neg += [empty] * (count - len(neg))
    embeds, pooled = _encode_chunks(pairs, positive, family, clip_skip, images)
    negative_embeds, negative_pooled = _encode_chunks(pairs, negative, family, clip_skip, images)
    return PromptEmbeddings(embeds, negative_embeds, pooled, negative_pooled)
