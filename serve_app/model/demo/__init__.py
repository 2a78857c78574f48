"""Tiny demo checkpoints and adapters (random weights, real architectures) and example custom jobs."""
