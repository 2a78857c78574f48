"""A1111's prompt attention syntax, parsed into (text, weight) fragments.

The semantics are A1111's (`modules/prompt_parser.parse_prompt_attention`), reimplemented here:
- `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1; nesting multiplies;
- `(text:1.3)` multiplies it by 1.3 (any number, signed, as A1111 reads it);
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters;
- an unclosed `(` or `[` still weights everything after it; a stray `)` or `]` is literal text;
- `BREAK` (upper case, a word of its own) ends the current 75-token chunk: it is the fragment
  `BREAK_MARKER` (A1111's `["BREAK", -1]`);
- neighbouring fragments of equal weight are merged.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

PromptSyntax = Literal["a1111", "plain"]  # plain: the prompt is literal text (still chunked)

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes (and a lone backslash)
    \(|\[|                         # openers
    :\s*([+-]?[.\d]+)\s*\)|        # an explicit weight closing a round bracket
    \)|]|                          # closers
    [^\\()\[\]:]+|                 # plain text
    :                              # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


class Fragment(NamedTuple):
    """A run of prompt text and the weight its tokens get (`BREAK_MARKER`: start a new chunk)."""

    text: str
    weight: float


BREAK_MARKER = Fragment("BREAK", -1.0)


def parse_attention(text: str) -> list[Fragment]:
    """`text` as weighted fragments, A1111's way; `[("", 1.0)]` for an empty prompt."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for item in res[start:]:
            item[1] *= multiplier

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:  # e.g. "(a:1.2.3)": A1111 would fail; here it is literal text
                res.append([token, 1.0])
                continue
            multiply_from(round_open.pop(), factor)
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append(list(BREAK_MARKER))
                res.append([part, 1.0])
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):  # merge runs of equal weight
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [Fragment(t, w) for t, w in res]


def plain_fragments(text: str) -> list[Fragment]:
    """`text` as one fragment of weight 1 (the `plain` prompt syntax: brackets and BREAK are literal)."""
    return [Fragment(text, 1.0)]
