"""Local artifact store: content addressing, integrity on read, no paths outside the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.artifacts import LocalArtifactStore, file_sha256, tree_files, tree_sha256
from shared.errors import IntegrityError, NotFoundError, ValidationError


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store")


def _adapter_dir(root: Path, weights: bytes = b"weights") -> Path:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "adapter_model.safetensors").write_bytes(weights)
    (root / "sub").mkdir()
    (root / "sub" / "note.txt").write_text("lineage")
    return root


def test_file_round_trip_is_content_addressed(store: LocalArtifactStore, tmp_path: Path) -> None:
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
    a = _adapter_dir(tmp_path / "a")
    b = _adapter_dir(tmp_path / "b")
    key = store.put_dir(a)
    assert store.put_dir(b) == key
    out = store.get_dir(key)
    assert (out / "sub" / "note.txt").read_text() == "lineage"
    assert tree_sha256(tree_files(out)) == key
    other = _adapter_dir(tmp_path / "c", weights=b"other")
    assert store.put_dir(other) != key


def test_tampered_dir_is_detected_on_read(store: LocalArtifactStore, tmp_path: Path) -> None:
    key = store.put_dir(_adapter_dir(tmp_path / "a"))
    weights = Path(store.root) / "trees" / key / "adapter_model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"evil")
    with pytest.raises(IntegrityError) as err:
        store.get_dir(key)
    assert "adapter_model.safetensors: content differs" in str(err.value)


def test_tampered_file_is_detected_on_read(store: LocalArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.write_bytes(b"x")
    key = store.put_file(src)
    blob = Path(store.root) / "blobs" / key
    blob.chmod(0o644)
    blob.write_bytes(b"y")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get_file(key)


@pytest.mark.parametrize("key", ["../../etc/passwd", "a" * 63, "A" * 64, "/abs", "a" * 64 + "/.."])
def test_keys_cannot_name_paths(store: LocalArtifactStore, key: str) -> None:
    with pytest.raises(ValidationError, match="not a sha256"):
        store.get_dir(key)
    with pytest.raises(ValidationError, match="not a sha256"):
        store.get_file(key)


def test_missing_keys_are_not_found(store: LocalArtifactStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_dir("0" * 64)


def test_contains_resolves_links_and_dotdots(store: LocalArtifactStore, tmp_path: Path) -> None:
    inside = Path(store.root) / "trees"
    assert store.contains(inside)
    assert not store.contains(inside / ".." / ".." / "elsewhere")
    link = Path(store.root) / "trees" / "escape"
    link.symlink_to(tmp_path)
    assert not store.contains(link)


def test_symlinks_inside_a_dir_are_refused(store: LocalArtifactStore, tmp_path: Path) -> None:
    src = _adapter_dir(tmp_path / "a")
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValidationError, match="symbolic link"):
        store.put_dir(src)


def test_empty_dir_is_refused(store: LocalArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="holds no files"):
        store.put_dir(tmp_path / "empty")
