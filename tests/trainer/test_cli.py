"""``loraplex train``: the YAML config and the HTTP body are the same typed object, and the
service commands work against the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from services.trainer import cli
from services.trainer.schemas import JobSpec
from tests.trainer.conftest import order_chat, write_jsonl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "extraction"


@pytest.mark.parametrize("name", ["sft.yaml", "dpo.yaml"])
def test_shipped_configs_are_valid_job_specs(name: str) -> None:
    spec, root = cli.load_spec(EXAMPLES / name)
    assert (root / spec.training_file).is_file()
    assert spec.lora.r <= 16


def test_yaml_and_http_body_are_the_same_object(tmp_path: Path) -> None:
    body = {
        "model": "smollm2-135m-instruct",
        "training_file": "train.jsonl",
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}},
        "lora": {"r": 8, "lora_alpha": 16, "quantization": "nf4"},
        "seed": 3,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(body))
    from_yaml, _ = cli.load_spec(tmp_path / "job.yaml")
    assert from_yaml == JobSpec.model_validate_json(json.dumps(body))
    resolved = from_yaml.resolved()
    assert (resolved.beta, resolved.n_epochs, resolved.learning_rate) == (0.2, 1, 5e-5)
    assert (resolved.warmup_ratio, resolved.weight_decay, resolved.lr_scheduler_type) == (
        0.05,
        0.01,
        "cosine",
    )


def test_legacy_top_level_hyperparameters_map_to_method() -> None:
    spec = JobSpec.model_validate(
        {"training_file": "f", "hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 2}}
    )
    assert spec.method.type == "supervised" and spec.resolved().n_epochs == 3
    assert spec.resolved().learning_rate == pytest.approx(4e-4)


def test_run_with_a_bad_config_exits_2_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("training_file: x.jsonl\nlora: {r: 0}\nbogus: 1\n")
    result = CliRunner().invoke(cli.app, ["run", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert "lora.r" in result.output and "bogus" in result.output


@pytest.fixture
def api(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    class Shared:
        def __enter__(self) -> TestClient:
            return client

        def __exit__(self, *exc: Any) -> None:
            return None

    monkeypatch.setattr(cli, "_client", Shared)
    return client


def test_submit_status_events_cancel(api: TestClient, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [order_chat(i) for i in range(6)])
    (tmp_path / "job.yaml").write_text(
        "training_file: train.jsonl\nsuffix: cli-test\nlora: {r: 8}\n"
    )
    runner = CliRunner()
    result = runner.invoke(cli.app, ["submit", str(tmp_path / "job.yaml")])
    assert result.exit_code == 0, result.output
    job_id = json.loads(result.output.splitlines()[-1])["id"]
    assert "uploaded train.jsonl as file-" in result.output
    status = runner.invoke(cli.app, ["status", job_id])
    assert json.loads(status.output)["status"] == "validating_files"
    cancelled = runner.invoke(cli.app, ["cancel", job_id])
    assert json.loads(cancelled.output)["status"] == "cancelled"
    events = runner.invoke(cli.app, ["events", job_id])
    assert "created fine-tuning job" in events.output and "cancelled" in events.output
    missing = runner.invoke(cli.app, ["status", "ftjob-missing"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_submit_reports_every_data_problem(api: TestClient, tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"prompt": "x"}\n{bad\n')
    (tmp_path / "job.yaml").write_text("training_file: train.jsonl\n")
    result = CliRunner().invoke(cli.app, ["submit", str(tmp_path / "job.yaml")])
    assert result.exit_code == 2
    assert "line 1: missing field `completion`" in result.output
    assert "line 2: invalid JSON" in result.output


def test_run_nproc_out_of_range_exits_2_naming_processes(
    trainer_settings: Any, tmp_path: Path
) -> None:
    import os

    write_jsonl(tmp_path / "train.jsonl", [order_chat(i) for i in range(4)])
    (tmp_path / "job.yaml").write_text("training_file: train.jsonl\n")
    too_many = len(os.sched_getaffinity(0)) + 1
    for nproc in (0, too_many):
        result = CliRunner().invoke(
            cli.app, ["run", str(tmp_path / "job.yaml"), "--nproc", str(nproc)]
        )
        assert result.exit_code == 2, result.output
        assert "--nproc" in result.output and "processes" in result.output
    from shared.registry.db import open_registry
    from shared.registry.models import DatasetRow

    registry = open_registry(trainer_settings)
    with registry.session() as session:
        assert session.query(DatasetRow).count() == 0, "nothing stored"
    registry.dispose()


def test_run_nproc_starts_ranks_on_the_registered_files(
    trainer_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from services.trainer import launch

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two usable cores")
    started: list[tuple[JobSpec, str]] = []

    def run_ranks(spec: JobSpec, name: str) -> int:
        started.append((spec, name))
        return 0

    monkeypatch.setattr(launch, "run_ranks", run_ranks)
    write_jsonl(tmp_path / "train.jsonl", [order_chat(i) for i in range(4)])
    (tmp_path / "job.yaml").write_text(
        "training_file: train.jsonl\nsuffix: shop\nhyperparameters: {batch_size: 4}\n"
    )
    result = CliRunner().invoke(cli.app, ["run", str(tmp_path / "job.yaml"), "--nproc", "2"])
    assert result.exit_code == 0, result.output
    ((spec, name),) = started
    assert spec.processes == 2 and spec.training_file.startswith("file-") and name == "shop"


def test_submit_a_full_fine_tune_from_yaml(api: TestClient, tmp_path: Path) -> None:
    """``adapter: none`` in the config is the same field as over HTTP; the CLI's body carries no
    LoRA block for it (the API refuses one)."""
    write_jsonl(tmp_path / "train.jsonl", [order_chat(i) for i in range(6)])
    (tmp_path / "job.yaml").write_text("training_file: train.jsonl\nadapter: none\n")
    result = CliRunner().invoke(cli.app, ["submit", str(tmp_path / "job.yaml")])
    assert result.exit_code == 0, result.output
    job = api.get(f"/v1/fine_tuning/jobs/{json.loads(result.output.splitlines()[-1])['id']}")
    assert job.json()["adapter"] == "none" and job.json()["lora"] is None
    (tmp_path / "bad.yaml").write_text("training_file: train.jsonl\nadapter: none\nlora: {r: 8}\n")
    refused = CliRunner().invoke(cli.app, ["run", str(tmp_path / "bad.yaml")])
    assert (
        refused.exit_code == 2
        and "lora" in refused.output
        and "adapter is 'none'" in refused.output
    )
