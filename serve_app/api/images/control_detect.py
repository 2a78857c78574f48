"""`/controlnet/detect`: a preprocessor run on clients' images, for them to see (or send back as ready maps).

Blocking work (decode, preprocess, encode); the router runs it on its bounded CPU pool, never on its event
loop. An unknown preprocessor is a 422 listing the served ones.
"""

from __future__ import annotations

import io

from serve_app.api.images.upscaling import png_b64
from serve_app.api.request_resolution import decode_image
from serve_app.api.schemas.a1111_controlnet import ControlNetDetectRequest
from serve_app.config.modes_file import ModeLimits
from serve_app.core.errors import RequestValidationError
from serve_app.core.strict_model import quote
from serve_app.model.control.control_image import prepare_control_image
from serve_app.model.control.preprocessors import PREPROCESSORS, preprocessor_name


def check_module(module: str, field: str = "controlnet_module") -> str:
    name = preprocessor_name(module)
    if name is None:
        raise RequestValidationError(f"`{field}` {quote(module)} is not available; served: {', '.join(PREPROCESSORS)}",
                                     param=field)
    return name


def detect(body: ControlNetDetectRequest, limits: ModeLimits) -> list[str]:
    """The control map of each image, base64 PNGs, at the resolution the preprocessor ran at (the image scaled
    so that its shorter side is `controlnet_processor_res`), as the extension answers."""
    module = check_module(body.controlnet_module)
    field = "controlnet_images" if body.controlnet_images else "controlnet_input_images"
    images = body.controlnet_images or body.controlnet_input_images
    if not images:
        raise RequestValidationError(f"`{field}` must hold at least one base64 image, got []", param=field)
    out = []
    for i, data in enumerate(images):
        image = decode_image(data, f"{field}[{i}]", limits)
        a = None if body.controlnet_threshold_a == -1 else body.controlnet_threshold_a
        b = None if body.controlnet_threshold_b == -1 else body.controlnet_threshold_b
        factor = body.controlnet_processor_res / min(image.size)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        detected = prepare_control_image(image, module, size, "just_resize", body.controlnet_processor_res, a, b)
        buf = io.BytesIO()
        detected.save(buf, format="PNG")
        out.append(png_b64(buf.getvalue()))
    return out
