"""A1111's extra-network tags in prompts: `<lora:NAME:WEIGHT>` applies a LoRA (weight 1 when left out).

A1111 accepts more `:` fields after the weight (a separate text-encoder weight, `lbw=` blocks): they are
tolerated and ignored, as is any text around the tags. The tags leave the prompt the pipeline sees.
"""

from __future__ import annotations

import re

from serve_app.config.modes_file import MAX_LORAS_PER_REQUEST
from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote

# Checked before the tags are parsed, so no client makes the router's loop scan megabytes; the mode's own
# `max_prompt_chars` applies to the prompt without its tags afterwards.
MAX_TAGGED_PROMPT_CHARS = 65536
_LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>", re.IGNORECASE)


def split_lora_tags(prompt: str) -> tuple[str, list[dict[str, object]]]:
    """(the prompt without its `<lora:...>` tags, the LoRAs they name as `{name, weight}`)."""
    if len(prompt) > MAX_TAGGED_PROMPT_CHARS:
        raise RequestValidationError(f"`prompt` is {len(prompt)} characters long, more than the "
                                     f"{MAX_TAGGED_PROMPT_CHARS} this server reads; starts {quote(prompt)}",
                                     param="prompt")
    loras: list[dict[str, object]] = []
    for match in _LORA_TAG.finditer(prompt):
        if len(loras) == MAX_LORAS_PER_REQUEST:
            raise RequestValidationError(f"`prompt` has more than {MAX_LORAS_PER_REQUEST} <lora:...> tags",
                                         param="prompt")
        weight_text = (match[2] or "").strip()
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise RequestValidationError(f"`prompt` tag {quote(match[0])}: the weight must be a number",
                                         param="prompt") from None
        loras.append({"name": match[1].strip(), "weight": weight})
    return (_LORA_TAG.sub("", prompt).strip() if loras else prompt), loras
