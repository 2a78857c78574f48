"""The textual-inversion embeddings loaded into one pipeline's tokenizers and text encoders.

Each is loaded once (diffusers' `load_textual_inversion`) under its name lower-cased, and prompts name it
in lower case (`in_prompt`): the CLIP tokenizer lower-cases text before it matches added tokens, but
diffusers expands a multi-vector token in the prompt as written, so any other case would get one vector of
several. A loaded embedding stays: it changes nothing for a prompt that does not contain its name, and a
prompt that does uses it on a fresh replica too (the router resolves embeddings from the prompt text). SDXL
embeddings carry one vector set per text encoder (`clip_l`, `clip_g`). A changed file (new size) is loaded
again.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from serve_app.core.errors import AdapterFileError
from serve_app.model.generation.job import AdapterFile

logger = logging.getLogger(__name__)


class EmbeddingSet:
    def __init__(self) -> None:
        self.loaded: dict[str, AdapterFile] = {}  # token -> the file loaded under it
        self.loads = 0

    @property
    def bytes(self) -> int:
        return sum(e.file_bytes for e in self.loaded.values())

    def apply(self, pipe: Any, embeddings: list[AdapterFile]) -> None:
        """Make sure every one of `embeddings` is loaded into `pipe`."""
        for embedding in embeddings:
            token = embedding.name.lower()
            held = self.loaded.get(token)
            if held == embedding:
                continue
            if held is not None:  # the file changed: its old vectors go first
                self._unload(pipe, token)
            self._load(pipe, embedding, token)

    @staticmethod
    def in_prompt(text: str, embeddings: list[AdapterFile]) -> str:
        """`text` with each of `embeddings` named in lower case (the tokenizer lower-cases the rest anyway)."""
        for embedding in embeddings:
            text = re.sub(re.escape(embedding.name), embedding.name.lower(), text, flags=re.IGNORECASE)
        return text

    def _encoders(self, pipe: Any, state: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        """(vectors, text encoder, tokenizer) pairs the file's tensors go into."""
        if "clip_l" in state and "clip_g" in state:
            return [(state["clip_l"], pipe.text_encoder, pipe.tokenizer),
                    (state["clip_g"], pipe.text_encoder_2, pipe.tokenizer_2)]
        vectors = state["emb_params"] if "emb_params" in state else next(iter(state.values()))
        return [(vectors, pipe.text_encoder, pipe.tokenizer)]

    def _load(self, pipe: Any, embedding: AdapterFile, token: str) -> None:
        from safetensors.torch import load_file

        try:
            state = load_file(embedding.path)
            for vectors, encoder, tokenizer in self._encoders(pipe, state):
                pipe.load_textual_inversion(vectors.to(encoder.dtype), token=token, text_encoder=encoder,
                                            tokenizer=tokenizer)
        except Exception as exc:  # a file diffusers cannot load fails this request, not the pipeline
            self._unload(pipe, token)
            raise AdapterFileError(f"embedding {embedding.name!r} ({embedding.path}) cannot be loaded: "
                                   f"{type(exc).__name__}: {str(exc)[:200]}", param="prompt") from exc
        self.loaded[token] = embedding
        self.loads += 1
        logger.info("embedding %s loaded (%d bytes)", embedding.name, embedding.file_bytes)

    def _unload(self, pipe: Any, token: str) -> None:
        self.loaded.pop(token, None)
        for encoder, tokenizer in ((pipe.text_encoder, pipe.tokenizer),
                                   (getattr(pipe, "text_encoder_2", None), getattr(pipe, "tokenizer_2", None))):
            if tokenizer is None or encoder is None:
                continue
            tokens = [t for t in tokenizer.get_vocab() if t == token or t.startswith(f"{token}_")]
            if tokens:
                pipe.unload_textual_inversion(tokens, tokenizer=tokenizer, text_encoder=encoder)

    def clear(self) -> None:
        """The pipeline is gone: nothing is loaded any more."""
        self.loaded.clear()
