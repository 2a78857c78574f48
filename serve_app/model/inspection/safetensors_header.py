"""The one reader of a safetensors file's header (8-byte little-endian length + JSON): validated and bounded
before anything is parsed, so a multi-GB file (or a hostile one) costs one small read."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from serve_app.core.errors import CorruptCheckpointError
from serve_app.core.strict_model import StrictModel

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


class TensorHeader(StrictModel):
    dtype: str
    shape: list[int]
    data_offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def parameter_count(tensors: Iterable[TensorHeader]) -> int:
    """How many parameters the tensors hold, from their shapes alone."""
    return sum(t.numel for t in tensors)


def read_header_bytes(fh: BinaryIO, file_bytes: int, path: Path) -> bytes:
    """The length prefix and the raw JSON header of the open file `fh` (at its start), bounds checked."""
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header: file is {file_bytes} bytes, "
                                     "shorter than the 8-byte header length", param="checkpoint")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES or 8 + header_len > file_bytes:
        raise CorruptCheckpointError(
            f"{path}: corrupt or truncated safetensors header: it claims {header_len} header bytes but the "
            f"file has {file_bytes} bytes", param="checkpoint")
    return prefix + fh.read(header_len)


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorHeader], dict[str, str]]:
    """Read and validate the JSON header of a safetensors file; never touches tensor data."""
    file_bytes = path.stat().st_size
    with path.open("rb") as fh:
        raw = read_header_bytes(fh, file_bytes, path)[8:]
    header_len = len(raw)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header: not valid JSON ({exc})",
                                     param="checkpoint") from exc
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header: expected a JSON object",
                                     param="checkpoint")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorHeader] = {}
    data_end = 0
    for name, entry in header.items():
        try:
            tensors[name] = t = TensorHeader.model_validate(entry)
        except ValueError as exc:
            raise CorruptCheckpointError(f"{path}: corrupt safetensors header: bad entry for tensor {name!r}",
                                         param="checkpoint") from exc
        data_end = max(data_end, t.data_offsets[1])
    available = file_bytes - 8 - header_len
    if data_end > available:
        raise CorruptCheckpointError(
            f"{path}: truncated safetensors file: the header describes {data_end} bytes of tensor data but only "
            f"{available} follow it", param="checkpoint")
    return tensors, {str(k): str(v) for k, v in metadata.items()}
