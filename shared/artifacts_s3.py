"""The artifact store on S3-compatible object storage (AWS S3, MinIO, Ceph), through fsspec/s3fs.

Same interface and layout as :class:`shared.artifacts.LocalArtifactStore`. S3 has no rename, so a
tree becomes visible only when its index (``.loraplex-tree.json``) is written, after every file; a
reader that finds no index treats the tree as absent. Reads download into a local cache, verify the
hash there, and rename the verified copy into place, so vLLM and peft get a plain local folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from shared.artifacts import (
    TREE_INDEX,
    check_key,
    file_sha256,
    tree_files,
    tree_sha256,
    verify_tree,
)
from shared.errors import ConfigError, IntegrityError, NotFoundError, ValidationError


class S3ArtifactStore:
    def __init__(
        self, url: str, *, cache_dir: Path, endpoint_url: str | None = None, **options: Any
    ) -> None:
        try:
            import s3fs
        except ImportError as exc:  # the s3 extra is optional on single machines
            raise ConfigError(
                "artifact_url is s3://... but s3fs is not installed; pip install 'loraplex[s3]'",
                param="artifact_url",
            ) from exc
        bucket_prefix = url.removeprefix("s3://").strip("/")
        if not bucket_prefix:
            raise ConfigError("artifact_url s3:// needs a bucket name", param="artifact_url")
        self.root = f"s3://{bucket_prefix}"
        self._base = bucket_prefix
        client_kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
        self.fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, **options)
        self.cache = cache_dir.expanduser().resolve()
        for sub in ("blobs", "trees", "tmp"):
            (self.cache / sub).mkdir(parents=True, exist_ok=True)

    def _key(self, *parts: str) -> str:
        return "/".join((self._base, *parts))

    # -- writing -----------------------------------------------------------------------------
    def put_file(self, src: Path) -> str:
        key = file_sha256(src)
        remote = self._key("blobs", key)
        if not self.fs.exists(remote):
            self.fs.put_file(str(src), remote)
        return key

    def put_dir(self, src: Path) -> str:
        if not src.is_dir():
            raise NotFoundError(f"{src} is not a directory", param="path")
        files = tree_files(src)
        if not files:
            raise ValidationError(f"{src} holds no files", param="path")
        key = tree_sha256(files)
        if self.has_dir(key):
            return key
        for rel in files:
            self.fs.put_file(str(src / rel), self._key("trees", key, rel))
        if tree_files(src) != files:
            raise IntegrityError(f"{src} changed while it was being stored; try again")
        index = json.dumps({"sha256": key, "files": files}, indent=1)
        self.fs.pipe_file(self._key("trees", key, TREE_INDEX), index.encode())
        return key

    # -- reading -----------------------------------------------------------------------------
    def has_file(self, key: str) -> bool:
        return bool(self.fs.exists(self._key("blobs", check_key(key))))

    def has_dir(self, key: str) -> bool:
        return bool(self.fs.exists(self._key("trees", check_key(key), TREE_INDEX)))

    def get_file(self, key: str) -> Path:
        local = self.cache / "blobs" / check_key(key)
        if local.is_file() and file_sha256(local) == key:
            return local
        if not self.has_file(key):
            raise NotFoundError(f"artifact file {key} is not in the store", param="sha256")
        tmp = Path(tempfile.mkstemp(dir=self.cache / "tmp")[1])
        try:
            self.fs.get_file(self._key("blobs", key), str(tmp))
            if file_sha256(tmp) != key:
                raise IntegrityError(f"artifact file {key} is corrupt in {self.root}")
            tmp.replace(local)
        finally:
            tmp.unlink(missing_ok=True)
        return local

    def get_dir(self, key: str) -> Path:
        local = self.cache / "trees" / check_key(key)
        if local.is_dir():
            verify_tree(local, key)
            return local
        if not self.has_dir(key):
            raise NotFoundError(f"artifact directory {key} is not in the store", param="sha256")
        index = json.loads(self.fs.cat_file(self._key("trees", key, TREE_INDEX)))
        tmp = Path(tempfile.mkdtemp(dir=self.cache / "tmp"))
        try:
            for rel in index["files"]:
                target = tmp / rel
                if not target.resolve().is_relative_to(tmp.resolve()):
                    raise IntegrityError(f"artifact directory {key} names a path outside itself")
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self._key("trees", key, rel), str(target))
            (tmp / TREE_INDEX).write_text(json.dumps(index, indent=1))
            verify_tree(tmp, key)
            try:
                tmp.rename(local)
            except OSError:
                if not local.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local

    def contains(self, path: Path) -> bool:
        return path.expanduser().resolve().is_relative_to(self.cache)
