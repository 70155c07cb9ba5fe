"""Subjects: how a model to evaluate is named and identified, and how a name resolves (the
registry replaced by fakes: base names, unknown names, the default baseline)."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from services.evaluator import subjects
from services.evaluator.subjects import default_baseline, resolve_subject
from shared.datasets.records import Message
from shared.errors import NotFoundError, ValidationError
from shared.registry import adapters
from tests.evaluator.planning import BARE, BASE, CANDIDATE

SETTINGS: Any = SimpleNamespace(base_model="m")


class Session:
    def __init__(self, bases: tuple[str, ...] = ()) -> None:
        self.bases = bases

    def get(self, _model: type, name: str) -> object | None:
        return object() if name in self.bases else None


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Base models resolve to BASE-like models of their name; adapter lookups are refused unless
    a test adds an alias."""
    state: dict[str, Any] = {"alias": None}

    def resolve_base(_settings: Any, name: str, session: Any = None) -> Any:
        return replace(BASE, name=name)

    def resolve(_session: Any, name: str) -> Any:
        raise NotFoundError(f"no {name}")

    monkeypatch.setattr(subjects, "resolve_base_model", resolve_base)
    monkeypatch.setattr(adapters, "resolve", resolve)
    monkeypatch.setattr(adapters, "get_alias", lambda *_a: state["alias"])
    return state


def test_a_subject_names_and_identifies_itself() -> None:
    assert BARE.is_base and BARE.adapter_name is None
    assert BARE.served_name == "m" and BARE.token == "m"
    assert not CANDIDATE.is_base and CANDIDATE.adapter_name == "a"
    assert CANDIDATE.served_name == "a@v2" and CANDIDATE.token == "a@v2"
    assert replace(CANDIDATE, label="a:prod").token == "a@v2"  # the version, not the alias
    assert CANDIDATE.identity() == {
        "base_model": "m",
        "base_weights_sha256": "0" * 64,
        "adapter": "a@v2",
        "adapter_sha256": "1" * 64,
    }
    fewshot = replace(BARE, label="m+fewshot:1", shots=((Message("user", "q"),),))
    assert fewshot.token == "m+fewshot:1"
    assert fewshot.identity()["fewshot_sha256"] == fewshot.shots_sha256
    assert "fewshot_sha256" not in BARE.identity()  # the zero-shot base keeps its cache keys
    other = replace(fewshot, shots=((Message("user", "other"),),))
    assert other.shots_sha256 != fewshot.shots_sha256


def test_the_identity_hash_covers_the_subject_and_what_the_caller_adds() -> None:
    h = CANDIDATE.identity_hash(backend="local", decoding={"a": 1, "b": 2})
    assert h == CANDIDATE.identity_hash(decoding={"b": 2, "a": 1}, backend="local")
    assert h != CANDIDATE.identity_hash(backend="server", decoding={"a": 1, "b": 2})
    assert h != replace(CANDIDATE, adapter_sha256="2" * 64).identity_hash(
        backend="local", decoding={"a": 1, "b": 2}
    )
    assert CANDIDATE.identity_hash() != BARE.identity_hash()


def test_base_names_resolve_to_the_base_model() -> None:
    session: Any = Session(bases=("other-base",))
    base = resolve_subject(SETTINGS, session, " base ")
    assert base.is_base and base.label == "m" and base.requested == "base"
    assert resolve_subject(SETTINGS, session, "m").base.name == "m"
    other = resolve_subject(SETTINGS, session, "other-base")
    assert other.label == "other-base" and other.is_base


def test_empty_odd_and_unknown_names_are_refused() -> None:
    session: Any = Session()
    with pytest.raises(ValidationError, match="baseline is empty"):
        resolve_subject(SETTINGS, session, "  ", param="baseline")
    with pytest.raises(ValidationError, match="candidate is not a model name"):
        resolve_subject(SETTINGS, session, "a\x00b")
    with pytest.raises(ValidationError, match="not a model name"):
        resolve_subject(SETTINGS, session, "x" * 256)
    with pytest.raises(NotFoundError, match="unknown candidate 'ghost@v9': no adapter version"):
        resolve_subject(SETTINGS, session, "ghost@v9")


def test_the_default_baseline_is_the_base_unless_another_version_is_prod(
    registry: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    session: Any = Session()
    assert default_baseline(SETTINGS, session, BARE) == replace(BARE, requested="base")
    registry["alias"] = SimpleNamespace(version_id="a@v2")  # the candidate is prod already
    fallback = default_baseline(SETTINGS, session, CANDIDATE)
    assert fallback.is_base and fallback.requested == "base"
    registry["alias"] = SimpleNamespace(version_id="a@v1")
    row = SimpleNamespace(
        id="a@v1", base_model="m", base_model_sha256="0" * 64, sha256="f" * 64, manifest=None
    )
    monkeypatch.setattr(adapters, "get_version", lambda _s, _v: row)
    store = SimpleNamespace(get_dir=lambda sha: f"/store/{sha[:4]}")
    monkeypatch.setattr(subjects, "open_store", lambda _settings: store)
    prod = default_baseline(SETTINGS, session, CANDIDATE)
    assert prod.version_id == "a@v1" and prod.requested == "a:prod"
    assert prod.adapter_sha256 == "f" * 64 and str(prod.adapter_path) == "/store/ffff"
    # A version trained on other weights than the base now has is refused.
    row.base_model_sha256 = "9" * 64
    with pytest.raises(ValidationError, match="was trained on base weights 999999999999"):
        default_baseline(SETTINGS, session, CANDIDATE)


FULL = replace(
    CANDIDATE, version_id="f@v1", label="f@v1", manifest={"kind": "full"}, weights_sha256="7" * 64
)


def test_a_full_fine_tune_is_identified_by_its_kind_and_weights() -> None:
    assert FULL.is_full and not CANDIDATE.is_full and not BARE.is_full
    assert not replace(BARE, manifest={"kind": "full"}).is_full  # the base is never a version
    assert FULL.identity()["kind"] == "full" and FULL.identity()["weights_sha256"] == "7" * 64
    assert "kind" not in CANDIDATE.identity()  # LoRA versions keep their cached answers
    other_weights = replace(FULL, weights_sha256="8" * 64)
    assert other_weights.identity_hash() != FULL.identity_hash()
    # The same folder read as a LoRA version is another subject: its answers are not shared.
    assert replace(FULL, manifest={}).identity_hash() != FULL.identity_hash()


def _stored(folder: Any, files: dict[str, bytes]) -> str:
    """``folder`` written as the artifact store writes a tree (files and its index); its key."""
    from shared.artifacts import TREE_INDEX, tree_files, tree_sha256

    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    listed = tree_files(folder)
    key = tree_sha256(listed)
    (folder / TREE_INDEX).write_text(json.dumps({"sha256": key, "files": listed}))
    return key


def test_the_weights_hash_covers_the_weight_files_only(tmp_path: Any) -> None:
    from shared.artifacts import TREE_INDEX

    files = {"model.safetensors": b"w1", "config.json": b"{}", "loraplex_manifest.json": b"{}"}
    key = _stored(tmp_path / "a", files)
    first = subjects.full_weights_sha256(tmp_path / "a", key)
    same = _stored(tmp_path / "b", {**files, "loraplex_manifest.json": b'{"other": 1}'})
    assert subjects.full_weights_sha256(tmp_path / "b", same) == first
    changed = _stored(tmp_path / "c", {**files, "model.safetensors": b"w2"})
    assert subjects.full_weights_sha256(tmp_path / "c", changed) != first
    # An index that does not hash to the tree's key is not trusted: the files are read.
    (tmp_path / "c" / TREE_INDEX).write_text((tmp_path / "a" / TREE_INDEX).read_text())
    assert subjects.full_weights_sha256(tmp_path / "c", changed) != first
    empty = _stored(tmp_path / "d", {"config.json": b"{}"})
    with pytest.raises(ValidationError, match="holds no weight files"):
        subjects.full_weights_sha256(tmp_path / "d", empty)


def test_a_full_version_resolves_with_its_weights_hash(
    registry: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    key = _stored(tmp_path / "f", {"model.safetensors": b"w", "config.json": b"{}"})
    row = SimpleNamespace(
        id="f@v1", base_model="m", base_model_sha256="0" * 64, sha256=key, manifest={"kind": "full"}
    )
    monkeypatch.setattr(adapters, "resolve", lambda _s, _n: row)
    store = SimpleNamespace(get_dir=lambda sha: tmp_path / "f")
    monkeypatch.setattr(subjects, "open_store", lambda _settings: store)
    session: Any = Session()
    full = resolve_subject(SETTINGS, session, "f:prod")
    assert full.is_full and full.adapter_path == tmp_path / "f" and full.requested == "f:prod"
    assert full.weights_sha256 == subjects.full_weights_sha256(tmp_path / "f", key)
    row.manifest = {}  # the same row as a LoRA version: no weights hash is read
    assert resolve_subject(SETTINGS, session, "f@v1").weights_sha256 is None
