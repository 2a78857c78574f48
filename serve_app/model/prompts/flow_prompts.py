"""Prompts of the flow-matching families (SD3, FLUX.1): plain text handed to the pipeline, which encodes it
with its own text encoders (FLUX: CLIP-L pooled + T5-XXL; SD3: CLIP-L + OpenCLIP-G + T5-XXL).

Decision: A1111's attention syntax is not applied to T5 prompts. Its emphasis scales CLIP hidden states per
77-token chunk and rescales them to the chunk's mean; T5 reads the whole prompt as one sequence (up to 256 /
512 tokens) and FLUX reads CLIP only as a pooled vector, so the same numbers would not mean the same thing.
With `prompt_syntax: a1111` escapes (`\\(`) are resolved and a prompt that asks for a weight (`(word:1.2)`,
`(word)`, `[word]`) or a `BREAK` is refused (422), never passed on with its weights silently dropped; with
`prompt_syntax: plain` the prompt goes as written. A prompt longer than the T5 sequence the pipeline reads
is refused too, not truncated.
"""

from __future__ import annotations

from typing import Any

from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote
from serve_app.model.families import Family
from serve_app.model.prompts.attention_syntax import BREAK_MARKER, PromptSyntax, parse_attention

# T5 tokens the pipelines read: FLUX.1 dev 512 (schnell was trained on 256), SD3 256 (its pipeline's default)
MAX_SEQUENCE_LENGTH = {Family.FLUX: 512, Family.SD3: 256}
_T5_TOKENIZER = {Family.FLUX: "tokenizer_2", Family.SD3: "tokenizer_3"}


def flow_prompt_text(text: str, syntax: PromptSyntax, family: Family, field: str = "prompt") -> str:
    """The text the pipeline gets for `text`; a weighted span or BREAK (A1111 syntax) raises, naming `field`."""
    if syntax == "plain":
        return text
    fragments = parse_attention(text)
    if any(f == BREAK_MARKER or abs(f.weight - 1.0) > 1e-6 for f in fragments):
        raise RequestValidationError(
            f"`{field}` {quote(text)} weights words (A1111's `(word:1.2)`, `(word)`, `[word]` or BREAK): prompt "
            f"weighting is not served for {family.value} (T5 prompts); remove the weights, escape brackets as "
            "`\\(`, or use a mode with `prompt_syntax: plain`", param=field)
    return "".join(f.text for f in fragments)


def flow_prompt_kwargs(pipe: Any, family: Family, prompt: str, negative_prompt: str, syntax: PromptSyntax,
                       images: int, true_cfg_scale: float | None) -> dict[str, Any]:
    """The pipeline's prompt arguments for `images` images (SD3 always takes the negative prompt; FLUX only
    with true CFG, `true_cfg_scale`)."""
    text = flow_prompt_text(prompt, syntax, family)
    max_tokens = MAX_SEQUENCE_LENGTH[family]
    tokenizer = getattr(pipe, _T5_TOKENIZER[family], None)
    if tokenizer is not None:
        count = len(tokenizer(text).input_ids)
        if count > max_tokens:
            raise RequestValidationError(f"`prompt` is {count} T5 tokens; {family.value} reads at most {max_tokens}",
                                         param="prompt")
    kwargs: dict[str, Any] = {"prompt": [text] * images, "max_sequence_length": max_tokens}
    if family is Family.SD3 or true_cfg_scale is not None:
        negative = flow_prompt_text(negative_prompt, syntax, family, "negative_prompt")
        kwargs["negative_prompt"] = [negative] * images
    if true_cfg_scale is not None:
        kwargs["true_cfg_scale"] = true_cfg_scale
    return kwargs
