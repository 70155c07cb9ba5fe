"""``loraplex train run`` on local files records a lineage the evaluator can read back.

Training itself is replaced by a stand-in recipe that runs the real data preparation and manifest
code and registers a small adapter folder, so this stays fast; what is checked is the path a
local file takes into the registry and artifact store, and that ``eval run`` without ``--data``
then evaluates on exactly the validation split the trainer held out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.trainer import cli
from services.trainer.recipes.context import RecipeContext, RecipeResult
from shared.settings import SharedSettings
from tests.trainer.conftest import order_chat, write_jsonl


def _user_prompts(messages_rows: list[list[dict[str, Any]]]) -> list[str]:
    return sorted(next(m["content"] for m in msgs if m["role"] == "user") for msgs in messages_rows)


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the SFT recipe by one that prepares data and writes the manifest for real, then
    registers a tiny adapter folder instead of training one. Returns what the trainer held out."""
    from services.trainer.recipes import data as recipe_data
    from services.trainer.recipes import saving, setup, sft

    seen: dict[str, Any] = {}

    def fake_sft(ctx: RecipeContext) -> RecipeResult:
        hp = ctx.spec.resolved()
        base = setup.setup_base(ctx)
        _tokenizer, renderer = setup.setup_tokenizer(base)
        data = recipe_data.prepare_data(ctx, renderer, "sft", hp)
        seen["validation"] = _user_prompts(
            [[m.to_dict() for m in e.messages] for e in data.validation]
        )
        seen["train_path"] = ctx.train_file.path
        folder = ctx.output_dir / "adapter"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
        (folder / "adapter_model.safetensors").write_bytes(b"not a real adapter")
        manifest = saving.write_manifest(
            ctx,
            folder,
            base=base,
            renderer=renderer,
            data=data,
            hp=hp,
            decisions={},
            log_history=[],
            trained_tokens=0,
        )
        version = ctx.register(folder, manifest, base)
        return RecipeResult(version_id=version, adapter_dir=folder, manifest=manifest)

    monkeypatch.setattr(sft, "run_sft", fake_sft)
    return seen


def _train(config: Path) -> str:
    result = CliRunner().invoke(cli.app, ["run", str(config), "--adapter-name", "orders"])
    assert result.exit_code == 0, result.output
    line = [ln for ln in result.output.splitlines() if ln.startswith("{")][-1]
    return str(json.loads(line)["version_id"])


def _default_eval_items(version: str) -> list[str]:
    """The prompts ``loraplex eval run --candidate VERSION`` (no ``--data``) would evaluate."""
    return _user_prompts([list(i.prompt_dicts()) for i in _default_eval_data(version).items])


def _default_eval_data(version: str) -> Any:
    """The data ``loraplex eval run --candidate VERSION`` (no ``--data``) would evaluate."""
    from services.evaluator.config import EvaluatorSettings
    from services.evaluator.schemas import EvaluationCreate
    from services.evaluator.service import prepare
    from shared.registry.db import open_registry

    settings = EvaluatorSettings()
    registry = open_registry(settings)
    try:
        prepared = prepare(
            settings,
            registry,
            EvaluationCreate(candidate=version, baseline="none", suite="quick"),
            check_endpoints=False,
        )
    finally:
        registry.dispose()
    return prepared.plan.data


def test_train_run_registers_its_file_and_eval_rebuilds_the_held_out_split(
    model_settings: SharedSettings, fake_training: dict[str, Any], tmp_path: Path
) -> None:
    from shared.artifacts import file_sha256, open_store
    from shared.registry.db import open_registry
    from shared.registry.models import AdapterVersionRow, DatasetRow

    train = write_jsonl(tmp_path / "orders.jsonl", [order_chat(i) for i in range(40)])
    config = tmp_path / "job.yaml"
    config.write_text(
        "training_file: orders.jsonl\nseed: 7\ndata: {validation_fraction: 0.25}\n"
        "method: {type: supervised, supervised: {hyperparameters: {max_steps: 1}}}\n"
    )
    version = _train(config)

    registry = open_registry(model_settings)
    try:
        with registry.session() as session:
            manifest = session.get(AdapterVersionRow, version).manifest  # type: ignore[union-attr]
            ref = manifest["datasets"]["training_file"]
            row = session.get(DatasetRow, ref["id"])
            assert row is not None and (row.filename, row.purpose) == ("orders.jsonl", "fine-tune")
            assert ref["sha256"] == row.sha256 == file_sha256(train)
            assert row.row_count == 40
    finally:
        registry.dispose()
    store = open_store(model_settings)
    assert store.has_file(ref["sha256"])
    # Training read the stored copy: the bytes trained on are the bytes the lineage names.
    assert store.contains(fake_training["train_path"])

    held_out = fake_training["validation"]
    assert len(held_out) == 10
    assert _default_eval_items(version) == held_out

    # The same config again: the file row is reused, so the lineage (and the version) is the same.
    assert _train(config) == version
    registry = open_registry(model_settings)
    try:
        with registry.session() as session:
            assert session.query(DatasetRow).count() == 1
    finally:
        registry.dispose()


@pytest.mark.parametrize("keep", [True, False])
def test_keep_markup_reaches_training_its_report_and_the_rebuilt_eval_split(
    keep: bool, model_settings: SharedSettings, fake_training: dict[str, Any], tmp_path: Path
) -> None:
    from shared.registry.db import open_registry
    from shared.registry.models import AdapterVersionRow

    rows = [order_chat(i) for i in range(12)]
    for row in rows:  # a task whose output is HTML
        row["messages"][-1]["content"] = f"<p>{row['messages'][-1]['content']}</p>"
    write_jsonl(tmp_path / "html.jsonl", rows)
    config = tmp_path / "job.yaml"
    config.write_text(
        f"training_file: html.jsonl\ndata: {{keep_markup: {str(keep).lower()}}}\n"
        "method: {type: supervised, supervised: {hyperparameters: {max_steps: 1}}}\n"
    )
    version = _train(config)
    registry = open_registry(model_settings)
    try:
        with registry.session() as session:
            manifest = session.get(AdapterVersionRow, version).manifest  # type: ignore[union-attr]
    finally:
        registry.dispose()
    report = manifest["validation_report"]
    cleaning = report["cleaning"]["training_file"]
    assert cleaning["keep_markup"] is keep
    assert cleaning["by_kind"].get("html_markup", 0) == (0 if keep else 12)
    warned = [w for w in report["warnings"] if "removed HTML" in w]
    assert len(warned) == (0 if keep else 1)
    assert keep or "from 12 of 12 assistant target(s)" in warned[0]
    # The evaluator cleans the rebuilt held-out split as the trainer did: HTML references stay
    # HTML only when the adapter was trained to write it.
    data = _default_eval_data(version)
    assert data.items and all(i.reference.startswith("<p>") is keep for i in data.items)
    assert data.describe()["cleaning"]["keep_markup"] is keep


def test_train_run_records_a_separate_validation_file(
    model_settings: SharedSettings, fake_training: dict[str, Any], tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "train.jsonl", [order_chat(i) for i in range(12)])
    validation = write_jsonl(tmp_path / "val.jsonl", [order_chat(i) for i in range(12, 16)])
    config = tmp_path / "job.yaml"
    config.write_text(
        "training_file: train.jsonl\nvalidation_file: val.jsonl\n"
        "method: {type: supervised, supervised: {hyperparameters: {max_steps: 1}}}\n"
    )
    version = _train(config)
    expected = _user_prompts(
        [json.loads(line)["messages"][:2] for line in validation.read_text().splitlines()]
    )
    assert fake_training["validation"] == expected
    assert _default_eval_items(version) == expected


def test_train_run_with_a_missing_file_names_it(
    model_settings: SharedSettings, fake_training: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("training_file: nowhere.jsonl\n")
    result = CliRunner().invoke(cli.app, ["run", str(config)])
    assert result.exit_code == 2
    assert "nowhere.jsonl" in result.output and "does not exist" in result.output
    assert "validation" not in fake_training


def test_train_run_with_a_missing_validation_file_registers_nothing(
    model_settings: SharedSettings, fake_training: dict[str, Any], tmp_path: Path
) -> None:
    from shared.registry.db import open_registry
    from shared.registry.models import DatasetRow

    write_jsonl(tmp_path / "train.jsonl", [order_chat(i) for i in range(12)])
    config = tmp_path / "job.yaml"
    config.write_text("training_file: train.jsonl\nvalidation_file: nowhere.jsonl\n")
    result = CliRunner().invoke(cli.app, ["run", str(config)])
    assert result.exit_code == 2
    assert "nowhere.jsonl" in result.output and "does not exist" in result.output
    registry = open_registry(model_settings)
    try:
        with registry.session() as session:
            assert session.query(DatasetRow).count() == 0  # the training file was not kept either
    finally:
        registry.dispose()


def test_train_run_continues_from_a_base_adapter_and_refuses_an_unknown_one(
    model_settings: SharedSettings, fake_training: dict[str, Any], tmp_path: Path
) -> None:
    from shared.registry.db import open_registry
    from shared.registry.models import AdapterVersionRow, DatasetRow

    write_jsonl(tmp_path / "train.jsonl", [order_chat(i) for i in range(12)])
    job = "training_file: train.jsonl\nmethod: {type: supervised}\n"
    (tmp_path / "v1.yaml").write_text(job)
    first = _train(tmp_path / "v1.yaml")
    (tmp_path / "v2.yaml").write_text(job + f"base_adapter: '{first}'\n")
    second = _train(tmp_path / "v2.yaml")
    (tmp_path / "bad.yaml").write_text(
        job.replace("train.jsonl", "other.jsonl") + "base_adapter: 'orders@v9'\n"
    )
    write_jsonl(tmp_path / "other.jsonl", [order_chat(i) for i in range(20, 32)])
    result = CliRunner().invoke(cli.app, ["run", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert "orders@v9" in result.output

    registry = open_registry(model_settings)
    try:
        with registry.session() as session:
            row = session.get(AdapterVersionRow, second)
            assert row is not None and second != first
            assert row.manifest["base_adapter"]["id"] == first
            # The refused run registered nothing: only train.jsonl is known.
            assert session.query(DatasetRow).count() == 1
    finally:
        registry.dispose()
