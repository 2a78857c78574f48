"""Adapters applied per request on a loaded pipeline: LoRAs, textual-inversion embeddings, VAEs."""
