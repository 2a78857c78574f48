"""The modules of a diffusers folder built on mapped weights, and the parts of converted all-in-one
checkpoints shared by their content.

Mapped: the UNet, VAE and text encoders of a diffusers folder (a mode's own folder, or a converted single file
in the conversion cache, `converted_cache`) are built from their weight files mapped as `mapped_weights` does,
so every process of the node that loads the folder maps one copy of it, and an offload from a GPU points the
weights back at the mapping instead of copying them into new host memory.

Shared by content: fine-tunes of one base model (SDXL fine-tunes above all) usually carry the very same VAE and
text encoders inside each all-in-one file. Each part file of a cache entry is fingerprinted once per entry (one
entry per file version): the sha256 of the file, which `save_pretrained` writes deterministically from its
tensors (same tensors, names and dtype: same bytes). The fingerprint is kept in the entry (`PARTS_RECORD`), and
the part file is hard-linked to `<cache>/shared/<fingerprint>.safetensors`: every entry holding that content
links the one inode, so the page cache holds it once however many modes use it, and its identity (device and
inode, `mapped_weights`) makes the registry book it once per node. A store file no entry links any more is
removed, with its cast copies. Where hard links cannot be made the part is simply not shared.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from serve_app.model.families import Family
from serve_app.model.loading.cast_copy_pruning import prune_copies_of
from serve_app.model.loading.component_weights import build_diffusers_model, build_text_encoder
from serve_app.model.loading.converted_cache import CACHE_OFF, sha256_file
from serve_app.model.loading.mapped_weights import COMPONENTS_DIR, MappedPart, mapped_part, read_mapped

logger = logging.getLogger(__name__)

SHARED_DIR = "shared"
PARTS_RECORD = "dreamlab-parts.json"
_WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
            "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}


def part_files(folder: Path) -> dict[str, Path]:
    """(pipeline attribute, weights file) of the folder's parts stored as one plain safetensors file each (a
    sharded or variant-only part is left to diffusers)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    return {attr: folder / attr / name for attr, name in _WEIGHTS.items()
            if isinstance(index.get(attr), list) and index[attr][1] and (folder / attr / name).is_file()}


def _kind(attr: str, family: Family) -> str:
    if attr == "text_encoder":
        return "openclip_h" if family is Family.SD2 else "clip_l"
    return {"text_encoder_2": "clip_g"}.get(attr, attr)


def build_mapped_parts(folder: Path, family: Family, dtype: torch.dtype, mapped: list[MappedPart],
                       label: str, cache_dir: Path | None, shared: dict[str, Path] | None = None) -> dict[str, Any]:
    """The folder's parts built on mapped weights, by pipeline attribute (to pass to `from_pretrained`); the
    parts whose weights stay mapped are added to `mapped`, named `<label>#<attr>`. A part of `shared` (see
    `share_by_content`) is read from its store file. A part stored in another dtype maps its cast copy,
    written once (per store file, for a shared part) in `cache_dir` (None: cast privately)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    built: dict[str, Any] = {}
    for attr, path in {**part_files(folder), **(shared or {})}.items():
        library, cls_name = index[attr]
        read = read_mapped(path, "", dtype, cache_dir if cache_dir is not None else CACHE_OFF)
        what = f"{label}: {attr}"
        if library == "transformers":
            model = build_text_encoder(folder / attr, read.state, dtype, what,
                                       projection=cls_name == "CLIPTextModelWithProjection")
        else:
            model = build_diffusers_model(cls_name, folder / attr, read.state, False, dtype, what)
        part = mapped_part(read, model, f"{label}#{attr}", _kind(attr, family))
        if part is not None:
            mapped.append(part)
        built[attr] = model
    return built


def fingerprints(entry: Path) -> dict[str, str]:
    """sha256 of each part file of `entry`: from its record when the file still has the recorded size, else
    computed now (once per entry: the record is written back when the entry is writable)."""
    record_path = entry / PARTS_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    record = record if isinstance(record, dict) else {}
    found: dict[str, str] = {}
    changed = False
    for attr, path in part_files(entry).items():
        size = path.stat().st_size
        known = record.get(attr)
        if isinstance(known, dict) and known.get("bytes") == size and isinstance(known.get("sha256"), str):
            found[attr] = known["sha256"]
            continue
        found[attr] = sha256_file(path)
        record[attr] = {"sha256": found[attr], "bytes": size}
        changed = True
    if changed:
        temp = entry / f".{PARTS_RECORD}-{uuid.uuid4().hex[:8]}"
        try:
            temp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(temp, record_path)
        except OSError as exc:
            logger.info("shared parts: cannot record the fingerprints of %s (%s)", entry, exc)
            temp.unlink(missing_ok=True)
    return found


def share_by_content(entry: Path, root: Path) -> dict[str, Path]:
    """Hard-link each part file of the cache entry `entry` to the content store under `root`, so equal parts of
    different checkpoints are one file; the store file of each part that now is one."""
    store = root / SHARED_DIR
    shared: dict[str, Path] = {}
    for attr, digest in fingerprints(entry).items():
        path = entry / attr / _WEIGHTS[attr]
        target = store / f"{digest[:40]}.safetensors"
        try:
            store.mkdir(exist_ok=True)
            try:
                os.link(path, target)  # the first entry with this content publishes it
            except FileExistsError:
                pass
            if not os.path.samefile(path, target):
                # checked once per entry (later loads find the link): a damaged store file is replaced by this
                # entry's, never linked into it
                intact = target.stat().st_size == path.stat().st_size and sha256_file(target) == digest
                replaced, into = (target, path) if intact else (path, target)
                temp = into.with_name(f".link-{uuid.uuid4().hex[:8]}")
                os.link(replaced, temp)
                os.replace(temp, into)  # in one step: a reader sees the old file or the link, never neither
                if intact:
                    logger.info("shared parts: %s of %s is the same as %s", attr, entry.name, target.name)
                else:
                    logger.warning("shared parts: %s was damaged; replaced by %s of %s", target, attr, entry.name)
            shared[attr] = target
        except OSError as exc:
            logger.info("shared parts: %s of %s is not shared (%s)", attr, entry.name, exc)
    _remove_orphans(store)
    return shared


def _remove_orphans(store: Path) -> None:
    """Remove store files no entry links any more (their entries were discarded or pruned)."""
    try:
        files = list(store.glob("*.safetensors"))
    except OSError:
        return
    for path in files:
        try:
            if path.stat().st_nlink == 1:
                prune_copies_of(path, store.parent / COMPONENTS_DIR)  # (resolved while the file still exists)
                path.unlink()
                logger.info("shared parts: removed %s (no checkpoint uses it any more)", path.name)
        except OSError:
            continue
