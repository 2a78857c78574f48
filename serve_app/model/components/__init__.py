"""Component files: text encoders, VAEs and denoisers kept in their own files, named by a mode."""
