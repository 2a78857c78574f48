"""Prompt encoding: A1111's attention syntax (`attention_syntax`, torch-free: the router's config imports it),
long prompts in 75-token chunks (`chunking`), the embeddings with emphasis and clip skip (`encoding`, torch)."""
