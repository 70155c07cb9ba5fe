"""Import refuses an adapter that declares another base, unless an operator states it is this one
(recorded in the version's lineage); matching and undeclared bases are accepted. No engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.server.cli import adapters_app
from services.server.config import ServerSettings
from services.server.declared_base import BaseStatement, check_declared_base, match_declared
from services.server.validation import BaseIdentity
from shared.artifacts import open_store, tree_files, tree_sha256
from shared.basemodel import EMBEDDED_HUB_ID, ResolvedBaseModel, known_names
from shared.errors import ValidationError
from shared.registry import adapters as reg
from shared.registry.db import open_registry
from tests.server.conftest import ADMIN, Stack
from tests.server.fakes import make_adapter

OTHER = "meta-llama/Llama-3.2-1B"


def _versions() -> list[dict[str, object]]:
    settings = ServerSettings()
    registry = open_registry(settings)
    try:
        with registry.read_session() as session:
            return [
                {"id": v.id, "manifest": dict(v.manifest or {})} for v in reg.list_versions(session)
            ]
    finally:
        registry.dispose()


def _stored(folder: Path) -> bool:
    return open_store(ServerSettings()).has_dir(tree_sha256(tree_files(folder)))


def test_names_the_base_answers_to(tmp_path: Path) -> None:
    base = BaseIdentity(
        "tiny-base", "0" * 64, tmp_path / "models" / "tiny-base", (EMBEDDED_HUB_ID,)
    )
    assert match_declared("tiny-base", base) == "name"
    assert match_declared("Tiny-Base", base) == "name"
    assert match_declared(str(tmp_path / "models" / "tiny-base"), base) == "path"
    assert match_declared("/elsewhere/checkouts/Tiny-Base/", base) == "name"  # last component
    assert match_declared("huggingfacetb/smollm2-135m-instruct", base) == "alias"
    assert match_declared(OTHER, base) is None
    # A hub id is not a path: its last component alone does not make it this base.
    assert match_declared("someone/tiny-base", base) is None
    assert check_declared_base({"r": 4}, base)["accepted_as"] == "undeclared"
    assert check_declared_base({"base_model_name_or_path": ""}, base)["declared"] is None
    with pytest.raises(ValidationError, match="needs a reason"):
        check_declared_base({}, base, BaseStatement("ops", "  "))


def test_embedded_and_hub_bases_answer_to_where_they_came_from(tmp_path: Path) -> None:
    embedded = ResolvedBaseModel("smollm2-135m-instruct", tmp_path, "0" * 64, "gguf:x.gguf")
    assert EMBEDDED_HUB_ID in known_names(embedded)
    hub = ResolvedBaseModel("org/model", tmp_path, "0" * 64, "hub:org/model")
    assert "org/model" in known_names(hub)


def test_cli_refuses_another_declared_base_and_stores_nothing(env: Path) -> None:
    runner = CliRunner()
    folder = make_adapter(env / "llama", base_model_name_or_path=OTHER)
    result = runner.invoke(adapters_app, ["import", str(folder), "--name", "bot"])
    assert result.exit_code == 3, result.output
    assert OTHER in result.output and "'tiny-base'" in result.output
    assert "--declared-base-is-this-base" in result.output
    assert _versions() == [] and not _stored(folder)
    # The flag without a reason is refused too, before anything is stored.
    result = runner.invoke(
        adapters_app, ["import", str(folder), "--name", "bot", "--declared-base-is-this-base"]
    )
    assert result.exit_code == 3 and "reason" in result.output
    assert _versions() == [] and not _stored(folder)


def test_cli_statement_registers_and_the_lineage_records_it(env: Path) -> None:
    folder = make_adapter(env / "llama", base_model_name_or_path=OTHER)
    result = CliRunner().invoke(
        adapters_app,
        [
            "import",
            str(folder),
            "--name",
            "bot",
            "--declared-base-is-this-base",
            "--reason",
            "re-exported from our tiny base under the wrong name",
            "--actor",
            "alice",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "registered bot@v1" in result.output
    [version] = _versions()
    record = version["manifest"]["declared_base"]  # type: ignore[index]
    assert record["declared"] == OTHER and record["served"] == "tiny-base"
    assert record["accepted_as"] == "stated" and record["accepted_by"] == "alice"
    assert record["reason"] == "re-exported from our tiny base under the wrong name"


@pytest.mark.parametrize(
    ("declared", "accepted_as"),
    [("tiny-base", "name"), ("TINY-BASE", "name"), ("/data/models/tiny-base", "name"), (None, "")],
)
def test_cli_accepts_a_matching_or_undeclared_base(
    env: Path, declared: str | None, accepted_as: str
) -> None:
    folder = make_adapter(env / "a", base_model_name_or_path=declared)
    result = CliRunner().invoke(adapters_app, ["import", str(folder), "--name", "bot"])
    assert result.exit_code == 0, result.output
    [version] = _versions()
    record = version["manifest"]["declared_base"]  # type: ignore[index]
    assert record["accepted_as"] == (accepted_as or "undeclared")
    assert "accepted_by" not in record


def test_upload_refuses_then_accepts_the_statement(one_engine: Stack) -> None:
    s = one_engine
    folder = s.adapter(base_model_name_or_path=OTHER)
    files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
    with s.client() as c:
        r = c.post("/admin/adapters/import", data={"name": "up"}, files=files, headers=ADMIN)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "base_model_mismatch"
        assert OTHER in error["message"] and "'tiny-base'" in error["message"]
        assert any("declared_base_ok" in d for d in error["details"])
        assert not s.store.has_dir(tree_sha256(tree_files(folder)))
        with s.registry.read_session() as session:
            assert reg.list_versions(session) == []
        data = {"name": "up", "declared_base_ok": "true", "reason": "same weights, renamed"}
        r = c.post("/admin/adapters/import", data=data, files=files, headers=ADMIN)
        assert r.status_code == 201, r.text
    record = r.json()["declared_base"]
    assert record["accepted_as"] == "stated" and record["reason"] == "same weights, renamed"
    assert record["accepted_by"] and record["declared"] == OTHER
    with s.registry.read_session() as session:
        stored = reg.get_version(session, "up@v1").manifest["declared_base"]
    assert stored == record
    assert json.dumps(stored)  # plain JSON in the manifest
