"""Hostile inputs for the input-bound tests (`test_input_bounds*.py`): a test mode with small limits and images
that lie about their size."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

from serve_app.config.modes_file import ModeConfig, ModeDefaults, ModeLimits

MODE = ModeConfig(name="sd1", checkpoint="tiny-sd1", scheduler="euler",
                  defaults=ModeDefaults(width=64, height=64, steps=2, guidance_scale=5.0),
                  limits=ModeLimits(max_width=256, max_height=256, max_steps=50, max_num_images=4,
                                    max_prompt_chars=200))
SMALL_CAP = 4096
HUGE = 20_000_000  # a 20 MB bad value
SHORT_ERROR = 1000  # bytes: "a few hundred" with room to spare



def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """An 8x8 PNG whose IHDR claims `width` x `height`: a header that would cost width*height to decode,
    with pixel data that cannot be decoded at that size (so a decode attempt would fail differently)."""
    data = bytearray(png(8, 8, "1"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def image(fmt: str, size: tuple[int, int] = (64, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format=fmt)
    return b64(buf.getvalue())
