"""`/sdapi/v1/png-info`: the generation parameters an image carries (A1111's infotext in a PNG's `parameters`
text chunk), read back with the same bounds as any image a client sends."""

from __future__ import annotations

from serve_app.api.request_resolution import decode_image
from serve_app.config.modes_file import ModeLimits
from serve_app.model.generation.infotext import parse_infotext, read_infotext


def png_info(image_b64: str, limits: ModeLimits) -> tuple[str, dict[str, str]]:
    """(the infotext, its parsed fields); ("", {}) for an image that carries none. Blocking: run off-loop."""
    text = read_infotext(decode_image(image_b64, "image", limits))
    return (text, parse_infotext(text)) if text else ("", {})
