"""`services.server.importer`: the base identity takes the configured aliases; a full fine-tune
is refused by import, exported as a copy of its folder and never loaded as a PEFT adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.server.config import ServerSettings
from services.server.declared_base import match_declared
from services.server.importer import (
    EXPORT_MARKER,
    base_identity,
    export_merged,
    import_folder,
    is_full_model_folder,
    merge_fp32,
)
from shared.artifacts import open_store, tree_files, tree_sha256
from shared.errors import ConflictError, ValidationError
from shared.registry.adapters import list_versions
from shared.registry.db import open_registry
from tests.server.fakes import make_adapter


def test_base_identity_takes_the_configured_aliases(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLEX_BASE_MODEL_ALIASES", "org/tiny-base-hub, other-name")
    settings = ServerSettings()
    registry = open_registry(settings)
    try:
        base = base_identity(settings, registry)
    finally:
        registry.dispose()
    assert base.name == "tiny-base"
    assert {"org/tiny-base-hub", "other-name"} <= set(base.aliases)
    assert match_declared("ORG/tiny-base-hub", base) == "alias"


def _full_folder(env: Path, name: str = "full") -> Path:
    """A full-model folder as tests/full_models.py writes one, on the tiny base (never loaded)."""
    folder = env / name
    shutil.copytree(env / "tiny-base", folder)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _register_full(env: Path, settings: ServerSettings) -> tuple[str, Path]:
    from shared.basemodel import resolve_base_model
    from tests.full_models import register_full_version

    folder = _full_folder(env)
    version = register_full_version(settings, resolve_base_model(settings), folder, name="ft")
    return version, folder


def test_a_full_model_folder_is_refused_by_import_and_nothing_stored(env: Path) -> None:
    settings = ServerSettings()
    folder = _full_folder(env)
    assert is_full_model_folder(folder) and not is_full_model_folder(make_adapter(env / "a"))
    with pytest.raises(ValidationError, match=r"is a full model .* not a LoRA adapter") as caught:
        import_folder(settings, folder, "ft")
    assert caught.value.param == "path"
    # A manifest saying ``kind: full`` is enough, whatever else the folder holds.
    marked = make_adapter(env / "marked")
    (marked / "loraplex_manifest.json").write_text(json.dumps({"kind": "full"}))
    with pytest.raises(ValidationError, match="is a full model"):
        import_folder(settings, marked, "ft")
    registry = open_registry(settings)
    try:
        with registry.session() as session:
            assert list_versions(session) == []
    finally:
        registry.dispose()


def test_a_full_version_exports_as_a_copy_of_its_folder(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.server import importer

    settings = ServerSettings()
    version, folder = _register_full(env, settings)

    def no_merge(*_a: object, **_k: object) -> None:
        raise AssertionError("a full version has nothing to merge")

    monkeypatch.setattr(importer, "merge_fp32", no_merge)
    registry = open_registry(settings)
    try:
        out = export_merged(settings, registry, open_store(settings), version, env / "out")
        with pytest.raises(ConflictError, match="pass --force"):
            export_merged(settings, registry, open_store(settings), version, env / "out")
    finally:
        registry.dispose()
    copied = sorted(p.name for p in out.iterdir())
    assert copied == sorted([*(p.name for p in folder.iterdir()), EXPORT_MARKER])
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["merged_from"] == version and marker["kind"] == "full"
    assert marker["source_sha256"] == tree_sha256(tree_files(folder))
    assert not list(env.glob(".out*"))  # no temporary folder left


def test_merge_loads_a_full_version_as_its_own_model_never_as_peft(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import peft
    import transformers

    settings = ServerSettings()
    version, _folder = _register_full(env, settings)
    loaded: list[str] = []

    def load(path: object, **kwargs: object) -> str:
        loaded.append(str(path))
        return "full model"

    def no_peft(*_a: object, **_k: object) -> None:
        raise AssertionError("a full version was loaded as a PEFT adapter")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load)
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", no_peft)
    registry = open_registry(settings)
    try:
        store = open_store(settings)
        info, _base, merged = merge_fp32(settings, registry, store, version)
    finally:
        registry.dispose()
    assert merged == "full model" and info.id == version
    assert loaded == [str(store.get_dir(info.sha256))]
