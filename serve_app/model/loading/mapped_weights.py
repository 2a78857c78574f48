"""Component weights held once per node: every replica that loads the same component file maps the same
file, so the OS page cache holds one copy of it however many mode replicas (separate processes) use it.

How: safetensors' `safe_open(...).get_tensor` on the CPU returns tensors backed by a private (copy-on-write)
memory map of the file; as long as nothing casts or copies them, the model's parameters *are* those pages.
- A file whose floating tensors (under the part's key prefix) are stored in the mode's dtype is mapped as is.
- Otherwise (an fp32 file for an fp16 mode, fp8 weights) the part's tensors are cast once per file version
  and written to `<conversion cache>/components/` (see `converted_cache.resolve_cache_dir`); every replica
  that wants that file in that dtype maps that one converted file. It is published with a hard link that
  fails when another writer won, so all readers map the same inode.
- What the load converts (original-layout transformers: fused qkv) is a new allocation, not mapped: a part
  counts as mapped for the parameters whose data lies inside the file's mapping, measured after the build.

Identity: the mapped file's device, inode, size and modification time (what the page cache shares), and
the key prefix (the part of the file used). A `MappedPart` keeps the mapped tensors of its parameters, so
an offload from a GPU points the parameters back at the mapping instead of copying the device's weights
into new host memory (`restore_mapping`): the RAM tier holds one copy of a shared part, not one per mode.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from serve_app.model.inspection.safetensors_header import read_safetensors_header
from serve_app.model.loading.cast_copy_pruning import cast_copy_metadata, copy_stem, prune_cast_copies
from serve_app.model.loading.converted_cache import resolve_cache_dir

logger = logging.getLogger(__name__)

COMPONENTS_DIR = "components"
CONVERSION_VERSION = 1  # bump when what a converted component file holds changes
_STORED_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


@dataclass(frozen=True)
class MappedComponent:
    """One part's weights held in a mapped file: what the registry books once per node."""

    identity: str  # device, inode, size, mtime of the mapped file, and the key prefix
    path: str  # the component's source file (what an operator named)
    kind: str  # clip_l, clip_g, t5xxl, vae, transformer, unet
    host_bytes: int  # bytes of the parameters that live in the mapping


@dataclass
class MappedPart:
    """A built module whose parameters (some or all) live in a mapped file; `tensors` are the mapped ones."""

    component: MappedComponent
    module: torch.nn.Module
    tensors: list[tuple[torch.nn.Parameter, torch.Tensor]]


def _identity(path: Path, prefix: str) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{prefix}"


def needs_conversion(path: Path, prefix: str, dtype: torch.dtype) -> bool:
    """Whether a floating tensor under `prefix` is stored in another dtype than `dtype` (so a load casts it)."""
    tensors, _ = read_safetensors_header(path)
    want = _STORED_NAME.get(dtype)
    return any(t.dtype != want for k, t in tensors.items()
               if k.startswith(prefix) and t.dtype.startswith(("F", "BF")))


def _converted_path(path: Path, prefix: str, dtype: torch.dtype, cache_dir: str | Path | None) -> Path | None:
    root = resolve_cache_dir(path, cache_dir)
    if root is None:
        return None
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{prefix}|{dtype}|{CONVERSION_VERSION}"
    stem = copy_stem(path)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / COMPONENTS_DIR / f"{stem}-{_STORED_NAME[dtype].lower()}-{digest}.safetensors"


def _write_converted(path: Path, prefix: str, dtype: torch.dtype, target: Path) -> bool:
    """Cast the tensors of `path` under `prefix` to `dtype` into `target` (published once); False if not writable."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    temp = target.with_name(f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
            state = {k: (t.to(dtype) if t.is_floating_point() else t).contiguous()
                     for k in fh.keys() if k.startswith(prefix) for t in (fh.get_tensor(k),)}  # noqa: SIM118
        save_file(state, str(temp), metadata=cast_copy_metadata(metadata, path, dtype))  # its source: for pruning
        del state
        try:
            os.link(temp, target)  # fails when another replica published first: everyone maps that one
        except FileExistsError:
            pass
        logger.info("component weights: %s (%s) cast to %s once, in %s", path.name, prefix or "all", dtype, target)
        prune_cast_copies(path, dtype, target)  # the copies of older versions of `path` (cast_copy_pruning)
        return True
    except OSError as exc:
        logger.warning("component weights: cannot write %s (%s): %s is loaded with a private cast", target, exc,
                       path.name)
        return False
    finally:
        temp.unlink(missing_ok=True)


def host_file(path: str | Path, prefix: str, dtype: torch.dtype, cache_dir: str | Path | None = None) -> Path:
    """The file to map for `path`'s tensors under `prefix` in `dtype`: itself when stored in `dtype`, else its
    converted copy (written on first use); `path` itself when no copy can be written (the load then casts)."""
    path = Path(path)
    if dtype not in _STORED_NAME or not needs_conversion(path, prefix, dtype):
        return path
    target = _converted_path(path, prefix, dtype, cache_dir)
    if target is None:
        return path
    if target.is_file() or _write_converted(path, prefix, dtype, target):
        return target
    return path


@dataclass
class MappedRead:
    """Tensors read from a file, and the address range of its mapping (None when they were cast privately)."""

    state: dict[str, torch.Tensor]
    file: Path
    prefix: str
    region: tuple[int, int] | None


def read_mapped(path: str | Path, prefix: str, dtype: torch.dtype, cache_dir: str | Path | None = None,
                converted_layout: bool = False) -> MappedRead:
    """The tensors of `path` under `prefix` (stripped) in `dtype`: mapped from `host_file` where possible.
    `converted_layout`: the load rebuilds the tensors (fused attention weights), so no copy is written for it."""
    from safetensors import safe_open

    source = Path(path) if converted_layout else host_file(path, prefix, dtype, cache_dir)
    state: dict[str, torch.Tensor] = {}
    low, high = None, None
    with safe_open(str(source), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
            if not key.startswith(prefix):
                continue
            tensor = fh.get_tensor(key)
            start = tensor.data_ptr()
            low = start if low is None else min(low, start)
            high = max(high or 0, start + tensor.numel() * tensor.element_size())
            state[key[len(prefix):]] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    region = (low, high) if low is not None and high is not None else None
    return MappedRead(state, source, prefix, region)


def mapped_part(read: MappedRead, module: torch.nn.Module, path: str | Path, kind: str) -> MappedPart | None:
    """The parameters of the built `module` whose data lies in `read`'s mapping; None when there are none."""
    if read.region is None:
        return None
    low, high = read.region
    tensors = [(p, p.data) for p in module.parameters() if p.device.type == "cpu" and low <= p.data_ptr() < high]
    if not tensors:
        return None
    host_bytes = sum(t.numel() * t.element_size() for _, t in tensors)
    component = MappedComponent(identity=_identity(read.file, read.prefix), path=str(path), kind=kind,
                                host_bytes=host_bytes)
    return MappedPart(component, module, tensors)


def restore_mapping(part: MappedPart) -> None:
    """Point the part's parameters back at their mapped tensors (an offload: no device-to-host copy)."""
    for param, tensor in part.tensors:
        param.data = tensor
