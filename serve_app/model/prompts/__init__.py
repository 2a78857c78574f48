"""Prompt encoding: A1111's attention syntax, long prompts in 75-token chunks, clip skip (see `encoding`)."""

from serve_app.model.prompts.encoding import PromptEmbeddings, PromptSyntax, chunk_count, encode_prompts

__all__ = ["PromptEmbeddings", "PromptSyntax", "chunk_count", "encode_prompts"]
