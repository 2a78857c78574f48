"""Plain upscaling in pixels (A1111's extras tab, `POST /sdapi/v1/extra-single-image`): Lanczos or nearest
neighbour, by a factor or to a size, bounded before and after decoding. No model runs: it happens in the
router (PIL, off the event loop)."""

from __future__ import annotations

import base64
import io

from PIL import Image

from serve_app.api.request_resolution import decode_image
from serve_app.config.modes_file import ModeLimits
from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote

MAX_UPSCALED_SIDE = 4096
# A1111 upscaler name -> PIL filter ("None": a plain Lanczos resize, as A1111 resizes without an upscaler)
PIXEL_UPSCALERS: dict[str, Image.Resampling] = {"None": Image.Resampling.LANCZOS,
                                                "Lanczos": Image.Resampling.LANCZOS,
                                                "Nearest": Image.Resampling.NEAREST}


def upscale_image(image_b64: str, upscaler: str, scale: float | None, size: tuple[int, int] | None,
                  limits: ModeLimits) -> bytes:
    """The image upscaled by `scale` (or resized to `size`) as PNG bytes; errors name A1111's fields."""
    if upscaler not in PIXEL_UPSCALERS:
        raise RequestValidationError(f"`upscaler_1` {quote(upscaler)} is not offered; use one of: "
                                     f"{', '.join(PIXEL_UPSCALERS)}", param="upscaler_1")
    if scale is not None and not 0 < scale <= 8:
        raise RequestValidationError(f"`upscaling_resize` must be in (0, 8], got {quote(scale)}",
                                     param="upscaling_resize")
    image = decode_image(image_b64, "image", limits)
    factor = scale if scale is not None else 1.0
    target = size or (round(image.width * factor), round(image.height * factor))
    field = "upscaling_resize_w" if size else "upscaling_resize"
    if not (1 <= target[0] <= MAX_UPSCALED_SIDE and 1 <= target[1] <= MAX_UPSCALED_SIDE):
        raise RequestValidationError(f"`{field}` makes {target[0]}x{target[1]}; each side must be 1 to "
                                     f"{MAX_UPSCALED_SIDE}", param=field)
    buf = io.BytesIO()
    image.resize(target, PIXEL_UPSCALERS[upscaler]).save(buf, format="PNG")
    return buf.getvalue()


def png_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
