"""Cast copies of component files are pruned: when the source changes (its mtime), the next load writes a new
copy and removes the old one, keeping the copies of the current version under another key prefix, of other
dtypes and of other sources; temporary files older than a day go too."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from serve_app.model.inspection.safetensors_header import read_safetensors_header
from serve_app.model.loading.cast_copy_pruning import SOURCE_KEY, prune_cast_copies
from serve_app.model.loading.mapped_weights import COMPONENTS_DIR, read_mapped


def _source(path: Path, value: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"a.weight": torch.full((4, 4), value), "b.weight": torch.full((2,), value)}, str(path),
              metadata={"kept": "yes"})
    return path


def _touch_later(path: Path, seconds: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def _copies(cache: Path) -> list[Path]:
    return sorted((cache / COMPONENTS_DIR).glob("*.safetensors"))


def test_a_changed_source_leaves_one_copy(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = _source(tmp_path / "models" / "t5.safetensors")
    first = read_mapped(source, "", torch.float16, cache_dir=cache)
    (old,) = _copies(cache)
    assert first.file == old and first.state["a.weight"].dtype == torch.float16
    _, metadata = read_safetensors_header(old)
    assert metadata["kept"] == "yes" and metadata[SOURCE_KEY] == str(source.resolve())  # its source recorded
    _source(source, value=2.0)  # the operator replaces the file: a new version
    _touch_later(source, 5)
    second = read_mapped(source, "", torch.float16, cache_dir=cache)
    (new,) = _copies(cache)  # the old copy is gone
    assert new != old and second.file == new and float(second.state["a.weight"][0, 0]) == 2.0


def test_live_copies_are_kept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = _source(tmp_path / "models" / "t5.safetensors")
    other = _source(tmp_path / "elsewhere" / "t5.safetensors")  # same name, another file
    read_mapped(source, "a.", torch.float16, cache_dir=cache)
    read_mapped(source, "", torch.bfloat16, cache_dir=cache)
    read_mapped(other, "", torch.float16, cache_dir=cache)
    before = _copies(cache)
    assert len(before) == 3
    read_mapped(source, "b.", torch.float16, cache_dir=cache)  # another part of the same version: kept
    after = _copies(cache)
    assert len(after) == 4 and set(before) <= set(after)
    _touch_later(source, 5)
    read_mapped(source, "", torch.float16, cache_dir=cache)
    # the fp16 copies of the old version (prefixes a. and b.) are gone; the bf16 one and the other source's stay
    names = [p.name for p in _copies(cache)]
    assert len(names) == 3 and sum("-bf16-" in n for n in names) == 1


def test_day_old_temporary_files_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / COMPONENTS_DIR
    folder.mkdir()
    stale, fresh = folder / ".tmp-x.safetensors-1-ab", folder / ".tmp-y.safetensors-2-cd"
    for path in (stale, fresh):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 25 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    source = _source(tmp_path / "t5.safetensors")
    published = folder / "t5-f16-0123456789abcdef.safetensors"
    assert prune_cast_copies(source, torch.float16, published) == [stale]
    assert not stale.exists() and fresh.exists()
