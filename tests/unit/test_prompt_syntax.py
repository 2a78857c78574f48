"""A1111's prompt attention syntax and 75-token chunking, pinned against A1111's documented examples."""

from __future__ import annotations

import pytest

from serve_app.model.demo.architectures import byte_level_clip_tokenizer
from serve_app.model.prompts.attention_syntax import BREAK_MARKER, Fragment, parse_attention
from serve_app.model.prompts.chunking import CHUNK_TOKENS, chunk_fragments, special_tokens, tokenize_fragments


def _pairs(text: str) -> list[tuple[str, float]]:
    return [(f.text, round(f.weight, 6)) for f in parse_attention(text)]


@pytest.mark.parametrize(("text", "expected"), [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
    ("[blurry]", [("blurry", round(1 / 1.1, 6))]),
    ("[[blurry]]", [("blurry", round(1 / 1.21, 6))]),
    ("(red fox:1.3)", [("red fox", 1.3)]),
    ("((detailed))", [("detailed", 1.21)]),
    ("stray) bracket]", [("stray) bracket]", 1.0)]),
    ("a: b", [("a: b", 1.0)]),
    ("", [("", 1.0)]),
])
def test_a1111_documented_examples(text: str, expected: list[tuple[str, float]]) -> None:
    assert _pairs(text) == expected


def test_break_is_its_own_fragment_only_as_an_upper_case_word() -> None:
    assert parse_attention("a cat BREAK a dog") == [Fragment("a cat", 1.0), BREAK_MARKER, Fragment("a dog", 1.0)]
    assert parse_attention("a break BREAKING") == [Fragment("a break BREAKING", 1.0)]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_clip_tokenizer()


def _chunks(tokenizer, text: str):
    return chunk_fragments(tokenize_fragments(parse_attention(text), tokenizer), special_tokens(tokenizer))


def test_a_short_prompt_is_one_chunk_laid_out_as_diffusers_does(tokenizer) -> None:
    (chunk,) = _chunks(tokenizer, "cat")
    reference = tokenizer("cat", padding="max_length", max_length=77).input_ids
    assert chunk.tokens == reference and len(chunk.tokens) == 77
    assert chunk.weights == [1.0] * 77


def test_long_prompts_take_chunks_of_75_tokens_each_with_start_and_end(tokenizer) -> None:
    special = special_tokens(tokenizer)
    text = "x" * 200  # the byte-level tokenizer: one token per character
    chunks = _chunks(tokenizer, text)
    assert [sum(t not in (special.start, special.end, special.pad) for t in c.tokens) for c in chunks] == [75, 75, 50]
    for chunk in chunks:
        assert len(chunk.tokens) == len(chunk.weights) == CHUNK_TOKENS + 2
        assert chunk.tokens[0] == special.start and special.end in chunk.tokens[1:]
    assert chunks[0].tokens[-1] == special.end  # a full chunk ends with the end token


def test_a_full_chunk_moves_the_text_after_a_near_comma_to_the_next_chunk(tokenizer) -> None:
    text = "x" * 70 + "," + "y" * 10  # the comma is token 71: the 4 y's that would still fit move on
    special = special_tokens(tokenizer)
    first, second = _chunks(tokenizer, text)
    words = [[t for t in c.tokens if t not in (special.start, special.end, special.pad)] for c in (first, second)]
    assert [len(w) for w in words] == [71, 10] and words[0][-1] == special.comma


def test_break_starts_a_new_chunk_and_weights_follow_their_tokens(tokenizer) -> None:
    first, second = _chunks(tokenizer, "(ab:1.5) BREAK [c]")
    assert first.weights[1:3] == [1.5, 1.5] and first.weights[3:] == [1.0] * 74
    assert second.weights[1] == pytest.approx(1 / 1.1) and second.weights[2:] == [1.0] * 75
