"""Configuration: the modes file and the application args. Uses the model layer, never the HTTP layer."""
