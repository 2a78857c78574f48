"""A1111 model hashes: the whole file's SHA-256, short hashes of 10 (checkpoints) and 12 (LoRAs) digits,
computed once per file version and found again without reading the file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from serve_app.model.inspection import model_hashes
from serve_app.model.inspection.model_hashes import LORA_SHORT, cached_sha256, compute_sha256, short_hash


def test_the_hash_is_the_files_sha256_and_is_kept_per_version(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DREAMLAB_CACHE_DIR", raising=False)
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x" * 3_000_000)
    assert cached_sha256(model) is None  # never computed: nothing is read on a request's path
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert compute_sha256(model) == expected
    assert (tmp_path / ".dreamlab-cache" / "hashes.json").is_file()
    reads = []
    monkeypatch.setattr(model_hashes, "sha256_file", lambda p: reads.append(p) or "never")
    assert cached_sha256(model) == expected and compute_sha256(model) == expected and reads == []
    model.write_bytes(b"y" * 10)  # a new version of the file
    os.utime(model, ns=(1, 1))
    assert cached_sha256(model) is None


def test_short_hashes_and_folders(tmp_path: Path) -> None:
    sha = "0123456789abcdef" * 4
    assert short_hash(sha) == "0123456789" and short_hash(sha, LORA_SHORT) == "0123456789ab"
    assert short_hash(None) is None
    folder = tmp_path / "tiny"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "w.safetensors").write_bytes(b"abc")
    first = compute_sha256(folder)
    (folder / "unet" / "w.safetensors").write_bytes(b"abcd")  # a changed weight file
    assert compute_sha256(folder) != first


def test_without_a_cache_the_hash_is_still_right(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DREAMLAB_CACHE_DIR", "off")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"z")
    assert compute_sha256(model) == hashlib.sha256(b"z").hexdigest()
    assert cached_sha256(model) is None and not (tmp_path / ".dreamlab-cache").exists()


def test_hashing_after_a_load_is_a_future_done_at_once_when_small_else_on_a_thread(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    from serve_app.model.inspection.model_hashes import hash_in_background

    monkeypatch.delenv("DREAMLAB_CACHE_DIR", raising=False)  # hashes kept next to the files

    small = tmp_path / "small.safetensors"
    small.write_bytes(b"x" * 1000)
    at_once = hash_in_background(small)
    assert at_once.done() and at_once.result() == hashlib.sha256(b"x" * 1000).hexdigest()
    large = tmp_path / "large.safetensors"
    large.write_bytes(b"y" * 5000)
    threaded = hash_in_background(large, sync_below_bytes=10)  # "large": hashed on a thread
    assert threaded.result(timeout=30) == hashlib.sha256(b"y" * 5000).hexdigest()
    assert hash_in_background(large, sync_below_bytes=10).done()  # known for this version: at once
