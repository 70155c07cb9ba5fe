"""``services.trainer.adapters``: a finished adapter folder is stored by content and registered as
one immutable version, in one transaction with the caller's own writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from services.trainer.adapters import store_and_register
from shared.artifacts import open_store
from shared.basemodel import ResolvedBaseModel
from shared.registry.adapters import list_versions
from shared.registry.db import open_registry
from shared.registry.models import AdapterVersionRow, BaseModelRow
from shared.registry.versions import is_full_model
from shared.settings import SharedSettings
from tests.trainer.conftest import BASE


def adapter_folder(path: Path, rank: int = 4, weights: bytes = b"w" * 100) -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


@pytest.fixture
def base(tmp_path: Path) -> ResolvedBaseModel:
    return ResolvedBaseModel(name=BASE, path=tmp_path / "base", weights_sha256="a" * 64, source="t")


def versions(settings: SharedSettings, name: str) -> list[AdapterVersionRow]:
    registry = open_registry(settings)
    try:
        with registry.session() as s:
            rows = list_versions(s, name)
            s.expunge_all()
            return rows
    finally:
        registry.dispose()


def test_a_folder_becomes_a_stored_version_with_its_rank_and_size(
    settings: SharedSettings, base: ResolvedBaseModel, tmp_path: Path
) -> None:
    folder = adapter_folder(tmp_path / "a", rank=8)
    size = sum(p.stat().st_size for p in folder.iterdir())
    manifest = {"trained_tokens": 12}
    version = store_and_register(settings, folder, manifest, base, "shop", job_id="ftjob-1")
    assert version == "shop@v1"
    (row,) = versions(settings, "shop")
    assert (row.rank, row.size_bytes, row.base_model, row.job_id) == (8, size, BASE, "ftjob-1")
    assert row.manifest["trained_tokens"] == 12
    stored = open_store(settings).get_dir(row.sha256)
    assert (stored / "adapter_model.safetensors").read_bytes() == b"w" * 100
    registry = open_registry(settings)
    try:
        with registry.session() as s:
            known = s.get(BaseModelRow, BASE)
            assert known is not None and known.weights_sha256 == "a" * 64
    finally:
        registry.dispose()


def test_identical_content_returns_the_version_that_exists(
    settings: SharedSettings, base: ResolvedBaseModel, tmp_path: Path
) -> None:
    seen: list[tuple[str, bool]] = []

    def note(session: Session, row: AdapterVersionRow, created: bool) -> None:
        seen.append((row.id, created))

    first = store_and_register(
        settings, adapter_folder(tmp_path / "a"), {}, base, "shop", in_session=note
    )
    again = store_and_register(
        settings, adapter_folder(tmp_path / "b"), {}, base, "shop", in_session=note
    )
    other = store_and_register(
        settings, adapter_folder(tmp_path / "c", weights=b"x"), {}, base, "shop", in_session=note
    )
    assert (first, again, other) == ("shop@v1", "shop@v1", "shop@v2")
    assert seen == [("shop@v1", True), ("shop@v1", False), ("shop@v2", True)]


def test_a_failing_in_session_write_rolls_the_registration_back(
    settings: SharedSettings, base: ResolvedBaseModel, tmp_path: Path
) -> None:
    def refuse(session: Session, row: AdapterVersionRow, created: bool) -> None:
        raise RuntimeError("the job was cancelled meanwhile")

    folder = adapter_folder(tmp_path / "a")
    with pytest.raises(RuntimeError, match="cancelled"):
        store_and_register(settings, folder, {}, base, "shop", in_session=refuse)
    assert versions(settings, "shop") == []
    assert store_and_register(settings, folder, {}, base, "shop") == "shop@v1"


def test_a_full_model_is_registered_with_rank_0_and_its_kind(
    settings: SharedSettings, base: ResolvedBaseModel, tmp_path: Path
) -> None:
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"m" * 100)  # no adapter_config.json: no rank
    version = store_and_register(settings, folder, {"kind": "full"}, base, "shop-full")
    (row,) = versions(settings, "shop-full")
    assert row.id == version and row.rank == 0 and is_full_model(row)
    # A LoRA folder without its adapter_config.json is still an error, not a rank-0 version.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "adapter_model.safetensors").write_bytes(b"w")
    with pytest.raises(FileNotFoundError):
        store_and_register(settings, bare, {}, base, "shop")
