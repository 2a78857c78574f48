"""Dream Lab: serve Stable Diffusion from many checkpoints at once on Ray Serve."""

__version__ = "0.1.0"
