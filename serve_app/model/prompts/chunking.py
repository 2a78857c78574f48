"""Weighted fragments -> CLIP token chunks, A1111's way (`sd_hijack_clip.tokenize_line`).

Each chunk holds 75 prompt tokens between its own start and end tokens (77 in all, CLIP's window); a prompt
longer than that takes more chunks, which are encoded one by one and concatenated. When a chunk fills up and
a comma lies within its last `COMMA_BACKTRACK` tokens, the text after that comma moves to the next chunk (so
a chunk does not end mid-phrase). `BREAK` ends a chunk early. A chunk is padded with the end token; like
A1111 (and diffusers), every position after the first end token then gets the tokenizer's pad token, so a
short plain prompt tokenizes exactly as diffusers' own `encode_prompt` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve_app.model.prompts.attention_syntax import BREAK_MARKER, Fragment

CHUNK_TOKENS = 75  # prompt tokens per chunk; +2 for the start and end tokens
COMMA_BACKTRACK = 20  # A1111's `comma_padding_backtrack` default


@dataclass
class TokenChunk:
    """77 token ids and the weight of each (1.0 for the start, end and padding tokens)."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SpecialTokens:
    start: int
    end: int
    pad: int
    comma: int | None


def special_tokens(tokenizer: Any) -> SpecialTokens:
    comma = tokenizer(",", add_special_tokens=False).input_ids
    return SpecialTokens(start=tokenizer.bos_token_id, end=tokenizer.eos_token_id,
                         pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                         comma=comma[0] if len(comma) == 1 else None)


def chunk_fragments(tokenized: list[tuple[list[int], float]], special: SpecialTokens) -> list[TokenChunk]:
    """Token chunks of `tokenized` (each fragment's token ids and weight; `BREAK_MARKER`'s weight with no ids
    ends a chunk). Always at least one chunk."""
    chunks: list[TokenChunk] = []
    chunk = TokenChunk()
    last_comma = -1

    def close() -> None:
        nonlocal chunk, last_comma
        missing = CHUNK_TOKENS - len(chunk.tokens)
        tokens = [special.start, *chunk.tokens, *[special.end] * missing, special.end]
        first_end = tokens.index(special.end, 1)
        tokens[first_end + 1:] = [special.pad] * (len(tokens) - first_end - 1)
        chunks.append(TokenChunk(tokens, [1.0, *chunk.weights, *[1.0] * (missing + 1)]))
        chunk, last_comma = TokenChunk(), -1

    for ids, weight in tokenized:
        if weight == BREAK_MARKER.weight:
            close()
            continue
        for token in ids:
            if token == special.comma:
                last_comma = len(chunk.tokens)
            elif (len(chunk.tokens) == CHUNK_TOKENS and last_comma != -1
                  and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK):
                cut = last_comma + 1
                moved = TokenChunk(chunk.tokens[cut:], chunk.weights[cut:])
                chunk = TokenChunk(chunk.tokens[:cut], chunk.weights[:cut])
                close()
                chunk = moved
            if len(chunk.tokens) == CHUNK_TOKENS:
                close()
            chunk.tokens.append(token)
            chunk.weights.append(weight)
    if chunk.tokens or not chunks:
        close()
    return chunks


def tokenize_fragments(fragments: list[Fragment], tokenizer: Any,
                       expand: Any = None) -> list[tuple[list[int], float]]:
    """Each fragment's token ids (no start/end tokens, no truncation) with its weight. `expand(text,
    tokenizer)` rewrites a fragment first (diffusers' `maybe_convert_prompt`: a multi-vector textual
    inversion token becomes its vector tokens)."""
    out: list[tuple[list[int], float]] = []
    for fragment in fragments:
        if fragment == BREAK_MARKER:
            out.append(([], fragment.weight))
            continue
        text = expand(fragment.text, tokenizer) if expand is not None else fragment.text
        # (`tokenize`: no special tokens, no truncation, and no warning about sequences beyond 77 tokens)
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) if text else []
        out.append((list(ids), fragment.weight))
    return out
