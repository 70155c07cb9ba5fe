"""Local artifact store: content addressing, integrity on read, no paths outside the root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.artifacts import (
    ArtifactStore,
    LocalArtifactStore,
    file_sha256,
    tree_files,
    tree_sha256,
)
from shared.errors import IntegrityError, NotFoundError, ValidationError
from tests.shared.stores import adapter_dir, s3_store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every store implementation passes the same suite."""
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    return s3_store(request.getfixturevalue("s3_endpoint"), tmp_path, monkeypatch)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store")


def test_file_round_trip_is_content_addressed(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "data.jsonl"
    src.write_text('{"a": 1}\n')
    key = store.put_file(src)
    assert key == file_sha256(src)
    assert store.put_file(src) == key
    assert store.get_file(key).read_text() == '{"a": 1}\n'
    assert store.has_file(key)


def test_dir_round_trip_and_same_content_same_key(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    a = adapter_dir(tmp_path / "a")
    b = adapter_dir(tmp_path / "b")
    key = store.put_dir(a)
    assert store.put_dir(b) == key
    out = store.get_dir(key)
    assert (out / "sub" / "note.txt").read_text() == "lineage"
    assert tree_sha256(tree_files(out)) == key
    other = adapter_dir(tmp_path / "c", weights=b"other")
    assert store.put_dir(other) != key


def test_tampered_dir_is_detected_on_read(local_store: LocalArtifactStore, tmp_path: Path) -> None:
    key = local_store.put_dir(adapter_dir(tmp_path / "a"))
    weights = Path(local_store.root) / "trees" / key / "adapter_model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"evil")
    with pytest.raises(IntegrityError) as err:
        local_store.get_dir(key)
    assert "adapter_model.safetensors: content differs" in str(err.value)


def test_tampered_file_is_detected_on_read(local_store: LocalArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.write_bytes(b"x")
    key = local_store.put_file(src)
    blob = Path(local_store.root) / "blobs" / key
    blob.chmod(0o644)
    blob.write_bytes(b"y")
    with pytest.raises(IntegrityError, match="corrupt"):
        local_store.get_file(key)


@pytest.mark.parametrize("key", ["../../etc/passwd", "a" * 63, "A" * 64, "/abs", "a" * 64 + "/.."])
def test_keys_cannot_name_paths(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValidationError, match="not a sha256"):
        store.get_dir(key)
    with pytest.raises(ValidationError, match="not a sha256"):
        store.get_file(key)


def test_missing_keys_are_not_found(store: ArtifactStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_dir("0" * 64)


def test_contains_resolves_links_and_dotdots(
    local_store: LocalArtifactStore, tmp_path: Path
) -> None:
    inside = Path(local_store.root) / "trees"
    assert local_store.contains(inside)
    assert not local_store.contains(inside / ".." / ".." / "elsewhere")
    link = Path(local_store.root) / "trees" / "escape"
    link.symlink_to(tmp_path)
    assert not local_store.contains(link)


def test_symlinks_inside_a_dir_are_refused(store: ArtifactStore, tmp_path: Path) -> None:
    src = adapter_dir(tmp_path / "a")
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValidationError, match="symbolic link"):
        store.put_dir(src)


def test_empty_dir_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="holds no files"):
        store.put_dir(tmp_path / "empty")
