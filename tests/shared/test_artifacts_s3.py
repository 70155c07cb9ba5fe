"""`shared.artifacts_s3`: an S3 tree without its index is absent, and tampering is caught on read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.errors import IntegrityError, NotFoundError
from tests.shared.stores import adapter_dir, s3_store


def test_s3_tree_without_index_is_absent_and_tampering_is_caught(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: Any = s3_store(s3_endpoint, tmp_path, monkeypatch)
    key = store.put_dir(adapter_dir(tmp_path / "a"))
    # An upload that died before its index was written is not a tree.
    store.fs.rm(store._key("trees", key, ".loraplex-tree.json"))
    assert not store.has_dir(key)
    with pytest.raises(NotFoundError):
        store.get_dir(key)
    key = store.put_dir(adapter_dir(tmp_path / "b"))
    store.fs.pipe_file(store._key("trees", key, "adapter_model.safetensors"), b"evil")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get_dir(key)
    assert not (tmp_path / "cache" / "trees" / key).exists()
