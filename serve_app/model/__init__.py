"""The model layer: checkpoints, VRAM estimates, loading and generation. No Ray, no FastAPI."""
