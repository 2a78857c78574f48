"""Loading checkpoints into diffusers pipelines: single-file conversion, its cache, the shipped family configs."""
