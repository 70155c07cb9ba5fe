"""Local artifact store: content addressing, integrity on read, no paths outside the root."""

from __future__ import annotations

import socket
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto in server mode) on a free loopback port."""
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _s3_store(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    import boto3

    from shared.artifacts_s3 import S3ArtifactStore

    for var, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)
    bucket = f"b{tmp_path.name.replace('_', '-').lower()[-40:]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return S3ArtifactStore(
        f"s3://{bucket}/artifacts", cache_dir=tmp_path / "cache", endpoint_url=endpoint
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every store implementation passes the same suite."""
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    return _s3_store(request.getfixturevalue("s3_endpoint"), tmp_path, monkeypatch)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store")


def _adapter_dir(root: Path, weights: bytes = b"weights") -> Path:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "adapter_model.safetensors").write_bytes(weights)
    (root / "sub").mkdir()
    (root / "sub" / "note.txt").write_text("lineage")
    return root


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
    a = _adapter_dir(tmp_path / "a")
    b = _adapter_dir(tmp_path / "b")
    key = store.put_dir(a)
    assert store.put_dir(b) == key
    out = store.get_dir(key)
    assert (out / "sub" / "note.txt").read_text() == "lineage"
    assert tree_sha256(tree_files(out)) == key
    other = _adapter_dir(tmp_path / "c", weights=b"other")
    assert store.put_dir(other) != key


def test_tampered_dir_is_detected_on_read(local_store: LocalArtifactStore, tmp_path: Path) -> None:
    key = local_store.put_dir(_adapter_dir(tmp_path / "a"))
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
    src = _adapter_dir(tmp_path / "a")
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValidationError, match="symbolic link"):
        store.put_dir(src)


def test_empty_dir_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="holds no files"):
        store.put_dir(tmp_path / "empty")


def test_s3_tree_without_index_is_absent_and_tampering_is_caught(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: Any = _s3_store(s3_endpoint, tmp_path, monkeypatch)
    key = store.put_dir(_adapter_dir(tmp_path / "a"))
    # An upload that died before its index was written is not a tree.
    store.fs.rm(store._key("trees", key, ".loraplex-tree.json"))
    assert not store.has_dir(key)
    with pytest.raises(NotFoundError):
        store.get_dir(key)
    key = store.put_dir(_adapter_dir(tmp_path / "b"))
    store.fs.pipe_file(store._key("trees", key, "adapter_model.safetensors"), b"evil")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get_dir(key)
    assert not (tmp_path / "cache" / "trees" / key).exists()
