"""PII from a local training file through ``loraplex train run`` to the evaluator: ``redact``
keeps the addresses out of what the recipe trains on and records where they were in the
manifest; the evaluator finds the same file in the lineage for ``pii.leak_rate``; ``refuse``
stops the run naming file, line, field and kind. Training is the stand-in recipe of
test_cli_lineage (real data preparation, manifest and registration; no model training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.trainer import cli
from shared.settings import SharedSettings
from tests.trainer.conftest import write_jsonl
from tests.trainer.test_cli_lineage import _train, fake_training

__all__ = ["fake_training"]  # the fixture, used by name

EMAIL = "jane.doe@gmail.com"


def rows() -> list[dict[str, Any]]:
    out = []
    for i in range(12):
        reply = f"Write to {EMAIL} about order {i}." if i % 4 == 1 else f"Order {i} ships today."
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"Where is order {i}?"},
                    {"role": "assistant", "content": reply},
                ]
            }
        )
    return out


def test_redact_trains_on_placeholders_and_the_evaluator_finds_the_training_pii(
    model_settings: SharedSettings,
    fake_training: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.evaluator.config import EvaluatorSettings
    from services.evaluator.pii_leak import training_pii
    from services.evaluator.schemas import EvaluationCreate
    from services.evaluator.service import prepare
    from services.trainer.recipes import data as recipe_data
    from shared.registry.db import open_registry
    from shared.registry.models import AdapterVersionRow

    trained: list[str] = []
    real = recipe_data.prepare_data

    def recording(*args: Any, **kwargs: Any) -> Any:
        data = real(*args, **kwargs)
        trained.extend(e.text() for e in data.train)
        return data

    monkeypatch.setattr(recipe_data, "prepare_data", recording)
    write_jsonl(tmp_path / "orders.jsonl", rows())
    config = tmp_path / "job.yaml"
    config.write_text(
        "training_file: orders.jsonl\ndata: {pii: redact, validation_fraction: 0.25}\n"
        "method: {type: supervised, supervised: {hyperparameters: {max_steps: 1}}}\n"
    )
    version = _train(config)
    assert trained and not any(EMAIL in t for t in trained)
    assert any("[EMAIL]" in t for t in trained)

    registry = open_registry(model_settings)
    try:
        with registry.session() as session:
            row = session.get(AdapterVersionRow, version)
            assert row is not None
            section = row.manifest["validation_report"]["pii"]
    finally:
        registry.dispose()
    assert section["action"] == "redact" and section["kinds"] == {"email": 3}
    assert {f["line"] for f in section["findings"]} == {2, 6, 10}
    assert EMAIL not in json.dumps(row.manifest)

    settings = EvaluatorSettings()
    registry = open_registry(settings)
    try:
        plan = prepare(
            settings,
            registry,
            EvaluationCreate(candidate=version, baseline="none", suite={"pii": {"enabled": True}}),
            check_endpoints=False,
        ).plan
    finally:
        registry.dispose()
    assert isinstance(plan.training_files, list) and len(plan.training_files) == 1
    assert f"email:{EMAIL}" in training_pii(plan.training_files).values


def test_refuse_stops_the_run_naming_file_line_field_and_kind(
    model_settings: SharedSettings, fake_training: dict[str, Any], tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "orders.jsonl", rows())
    config = tmp_path / "job.yaml"
    config.write_text("training_file: orders.jsonl\ndata: {pii: refuse}\n")
    result = CliRunner().invoke(cli.app, ["run", str(config), "--adapter-name", "orders"])
    assert result.exit_code != 0
    assert "orders.jsonl line 2, field `messages[1].content`: email" in result.output
    assert EMAIL not in result.output
    assert "validation" not in fake_training  # nothing was prepared, let alone trained
