"""Image work the router does for clients without a model: PNG infotext, upscaling, control maps, URL images."""
