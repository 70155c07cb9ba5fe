"""The release flow end to end: trainer, evaluator and server as separate processes on one registry.

Real vLLM engine, real training (a few steps on a tiny data set), real evaluation. Checks that the
promoted version is the job's, that the evaluation recorded is the one that justified the move,
that the alias answers with the new version within the reconcile deadline, that killing the trainer
worker or the server mid-flow and starting it again lets the flow finish, and that a rollback puts
the old version back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from services.localstack import LocalStack
from services.release import HttpRelease, Services, load_config
from shared.basemodel import ResolvedBaseModel
from shared.registry import adapters as reg
from shared.registry.db import open_registry
from shared.registry.models import AliasEventRow, EvaluationRunRow, TrainingJobRow
from shared.settings import SharedSettings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "extraction" / "sft_train.jsonl"
TEST = REPO / "examples" / "extraction" / "test.jsonl"
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, base_model: ResolvedBaseModel
) -> Iterator[LocalStack]:
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    models = data_dir / "models" / base_model.path.name
    models.mkdir(parents=True)
    for item in base_model.path.iterdir():
        (models / item.name).hardlink_to(item)
    env = {
        "LORAPLEX_KV_CACHE_GIB": "1",
        "LORAPLEX_RECONCILE_INTERVAL_S": "0.5",
        "LORAPLEX_STALE_AFTER_SECONDS": "5",
        "LORAPLEX_HEARTBEAT_SECONDS": "1",
    }
    with LocalStack(data_dir, extra_env=env) as local:
        local.start()
        yield local


def _release_yaml(tmp: Path, seed: int) -> Path:
    train = tmp / "train.jsonl"
    train.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:24]))
    policy = {
        "version": 1,
        "min_items": 4,
        "metrics": {"perplexity": {"max": 10_000}, "bits_per_byte": {"max": 100}},
    }
    config = {
        "adapter": "flow",
        "promote": "prod",
        "training": {
            "model": "smollm2-135m-instruct",
            "training_file": str(train),
            "seed": seed,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"max_steps": 4, "batch_size": 4}},
            },
            "lora": {"r": 8, "lora_alpha": 16},
        },
        "evaluation": {"data": str(TEST), "limit": 6, "suite": "quick", "policy": policy},
    }
    path = tmp / f"release-{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _release(stack: LocalStack, path: Path, lines: list[str]) -> int:
    cfg, root = load_config(path)
    cfg.services = Services(
        trainer_url=stack.trainer_url,
        evaluator_url=stack.evaluator_url,
        server_url=stack.server_url,
        reconcile_deadline_s=DEADLINE_S,
        poll_s=0.5,
    )
    return HttpRelease(cfg, root, say=lines.append).run()


def _answering_version(stack: LocalStack, model: str) -> str | None:
    response = httpx.post(
        f"{stack.server_url}/v1/completions",
        json={"model": model, "prompt": "Order:", "max_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.headers.get("x-loraplex-adapter-version")


def _registry(stack: LocalStack) -> Any:
    return open_registry(SharedSettings(data_dir=stack.data_dir))


def test_release_promote_survive_kills_and_roll_back(stack: LocalStack, tmp_path: Path) -> None:
    lines: list[str] = []
    # -- version 1: trained, evaluated against the base model, promoted ------------------------
    assert _release(stack, _release_yaml(tmp_path, seed=1), lines) == 0, "\n".join(lines)
    registry = _registry(stack)
    with registry.read_session() as s:
        v1 = reg.resolve(s, "flow:prod")
        event = reg.alias_history(s, "flow", "prod")[0]
        run = s.get(EvaluationRunRow, event.evaluation_run_id)
        assert run is not None and run.candidate == v1.id and run.decision == "pass"
        assert v1.job_id is not None
    assert _answering_version(stack, "flow") == v1.id

    # -- version 2, with the trainer worker killed mid-job and restarted -------------------------
    worker = stack.services["trainer-worker"]
    result: dict[str, int] = {}
    release = threading.Thread(
        target=lambda: result.setdefault("code", _release(stack, _release_yaml(tmp_path, 2), lines))
    )
    release.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        # A read session: holding a write transaction here would block the trainer's own writes.
        with registry.read_session() as s:
            running = s.scalars(select(TrainingJobRow).where(TrainingJobRow.status == "running"))
            if running.first() is not None:
                break
        time.sleep(0.5)
    worker.kill9()
    worker.start(stack.env())
    release.join(timeout=900)
    assert result.get("code") == 0, "\n".join(lines)
    with registry.read_session() as s:
        v2 = reg.resolve(s, "flow:prod")
        assert v2.version == 2
        # Exactly one version per job, even though the worker died during it.
        assert [v.id for v in reg.list_versions(s, "flow")] == [v1.id, v2.id]
        last = s.get(AliasEventRow, reg.alias_history(s, "flow", "prod")[0].id)
        assert last is not None and last.from_version == v1.id and last.to_version == v2.id
        run2 = s.get(EvaluationRunRow, last.evaluation_run_id)
        assert run2 is not None and run2.candidate == v2.id and run2.baseline == v1.id
    assert _answering_version(stack, "flow") == v2.id

    # -- the server is killed and restarted: it converges to the registry by itself ------------
    server = stack.services["server"]
    server.kill9(group=True)  # like a container crash: the engines die with it
    server.start(stack.env())
    server.wait_healthy(600)
    assert _answering_version(stack, "flow") == v2.id

    # -- rollback through the admin API: the old version answers again --------------------------
    response = httpx.post(
        f"{stack.server_url}/admin/aliases/flow/prod/rollback",
        headers={"Authorization": f"Bearer {stack.admin_key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    start = time.monotonic()
    while _answering_version(stack, "flow") != v1.id:
        assert time.monotonic() - start < DEADLINE_S, "rollback did not reach the server in time"
        time.sleep(0.25)
    registry.dispose()
