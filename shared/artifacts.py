"""Content-addressed artifact store: files and directories stored by sha256, verified on read.

Layout under the root::

    blobs/<sha256>             one file; its name is the sha256 of its bytes
    trees/<sha256>/...         one directory; the hash covers every relative path and file hash
    trees/<sha256>/.loraplex-tree.json   the per-file hashes the tree was stored with

Writes go to a temporary sibling and are renamed into place, so a reader never sees half an
artifact, and two writers of the same content end with one copy. Keys are validated as hex digests,
so no key can name a path outside the root.

The local filesystem store is the embedded default; ``open_store`` returns the S3 implementation for
``s3://`` URLs (same interface, local read cache).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from shared.errors import IntegrityError, NotFoundError, ValidationError
from shared.settings import SharedSettings

TREE_INDEX = ".loraplex-tree.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_files(root: Path) -> dict[str, str]:
    """Relative POSIX path -> sha256 for every regular file under ``root`` (index file excluded)."""
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise ValidationError(f"{path} is a symbolic link; artifacts must be plain files")
        if path.is_file() and path.name != TREE_INDEX:
            files[path.relative_to(root).as_posix()] = file_sha256(path)
    return files


def tree_sha256(files: dict[str, str]) -> str:
    """Hash of a directory: sha256 over sorted ``path\\0filehash\\n`` lines."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel]}\n".encode())
    return digest.hexdigest()


def check_key(key: str) -> str:
    if not _HEX64.match(key):
        raise ValidationError(
            f"artifact key {key!r} is not a sha256 hex digest", param="sha256", code="invalid_key"
        )
    return key


class ArtifactStore(Protocol):
    """What services need from an artifact store; local and S3 stores both provide it."""

    root: str

    def put_file(self, src: Path) -> str: ...
    def put_dir(self, src: Path) -> str: ...
    def get_file(self, key: str) -> Path: ...
    def get_dir(self, key: str) -> Path: ...
    def has_file(self, key: str) -> bool: ...
    def has_dir(self, key: str) -> bool: ...
    def contains(self, path: Path) -> bool: ...


class LocalArtifactStore:
    """Artifact store on a local (or network-mounted, e.g. ReadWriteMany) filesystem."""

    def __init__(self, root: Path) -> None:
        self.root_path = root.expanduser().resolve()
        for sub in ("blobs", "trees", "tmp"):
            (self.root_path / sub).mkdir(parents=True, exist_ok=True)
        self.root = str(self.root_path)

    # -- writing -----------------------------------------------------------------------------
    def put_file(self, src: Path) -> str:
        tmp = Path(tempfile.mkstemp(dir=self.root_path / "tmp", prefix="blob-")[1])
        try:
            shutil.copyfile(src, tmp)
            key = file_sha256(tmp)
            dest = self.root_path / "blobs" / key
            if dest.exists():
                tmp.unlink()
            else:
                tmp.chmod(0o444)
                tmp.replace(dest)
            return key
        finally:
            tmp.unlink(missing_ok=True)

    def put_dir(self, src: Path) -> str:
        if not src.is_dir():
            raise NotFoundError(f"{src} is not a directory", param="path")
        files = tree_files(src)
        if not files:
            raise ValidationError(f"{src} holds no files", param="path")
        key = tree_sha256(files)
        dest = self.root_path / "trees" / key
        if dest.exists():
            return key
        tmp = Path(tempfile.mkdtemp(dir=self.root_path / "tmp", prefix="tree-"))
        try:
            for rel in files:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, target)
            copied = tree_files(tmp)
            if copied != files:
                raise IntegrityError(f"{src} changed while it was being stored; try again")
            (tmp / TREE_INDEX).write_text(json.dumps({"sha256": key, "files": files}, indent=1))
            try:
                tmp.rename(dest)
            except OSError:
                if not dest.exists():  # a concurrent writer of the same content won the rename
                    raise
            return key
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- reading -----------------------------------------------------------------------------
    def get_file(self, key: str) -> Path:
        path = self.root_path / "blobs" / check_key(key)
        if not path.is_file():
            raise NotFoundError(f"artifact file {key} is not in the store", param="sha256")
        if file_sha256(path) != key:
            raise IntegrityError(f"artifact file {key} is corrupt (its bytes no longer hash to it)")
        return path

    def get_dir(self, key: str) -> Path:
        path = self.root_path / "trees" / check_key(key)
        if not path.is_dir():
            raise NotFoundError(f"artifact directory {key} is not in the store", param="sha256")
        verify_tree(path, key)
        return path

    def has_file(self, key: str) -> bool:
        return (self.root_path / "blobs" / check_key(key)).is_file()

    def has_dir(self, key: str) -> bool:
        return (self.root_path / "trees" / check_key(key)).is_dir()

    def contains(self, path: Path) -> bool:
        """Whether ``path`` (after resolving links and ``..``) lies inside the store."""
        return path.expanduser().resolve().is_relative_to(self.root_path)


def verify_tree(path: Path, key: str) -> None:
    files = tree_files(path)
    if tree_sha256(files) != key:
        index_path = path / TREE_INDEX
        recorded = json.loads(index_path.read_text())["files"] if index_path.exists() else {}
        bad = sorted(
            {rel for rel in files.keys() | recorded.keys() if files.get(rel) != recorded.get(rel)}
        )
        raise IntegrityError(
            f"artifact directory {key} is corrupt",
            details=[f"{rel}: content differs from what was stored" for rel in bad] or None,
        )


def open_store(settings: SharedSettings) -> ArtifactStore:
    """The store the settings name: a local path (or ``file://``) or ``s3://bucket/prefix``."""
    url = settings.artifact_url
    if url.startswith("s3://"):
        from shared.artifacts_s3 import S3ArtifactStore

        return S3ArtifactStore(
            url,
            cache_dir=settings.data_dir / "cache" / "artifacts",
            endpoint_url=settings.s3_endpoint_url or None,
        )
    return LocalArtifactStore(Path(url.removeprefix("file://")))
