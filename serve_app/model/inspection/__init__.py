"""Looking at checkpoint and adapter files without loading them: family, layout, sizes, VRAM estimate."""
