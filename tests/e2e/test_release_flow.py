"""The release flow end to end: trainer, evaluator and server as separate processes on one registry.

Real vLLM engine, real training (a few steps on a tiny data set), real evaluation. Checks that the
promoted version is the job's, that the evaluation recorded is the one that justified the move,
that the alias answers with the new version within the reconcile deadline, that killing the trainer
worker or the server mid-flow and starting it again lets the flow finish, and that a rollback puts
the old version back, and that the services' logs tell all of it (text form; the JSON form is
``test_event_logs.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.localstack import LocalStack
from shared.basemodel import ResolvedBaseModel
from shared.registry import adapters as reg
from shared.registry.db import open_registry
from shared.registry.models import AliasEventRow, EvaluationRunRow, TrainingJobRow
from shared.settings import SharedSettings
from tests.e2e.releases import DEADLINE_S, local_stack, release_yaml, run_release
from tests.events import parse_lines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, base_model: ResolvedBaseModel
) -> Iterator[LocalStack]:
    env = {
        "LORAPLEX_KV_CACHE_GIB": "1",
        "LORAPLEX_RECONCILE_INTERVAL_S": "0.5",
        "LORAPLEX_STALE_AFTER_SECONDS": "5",
        "LORAPLEX_HEARTBEAT_SECONDS": "1",
        "LORAPLEX_REQUEST_SUMMARY_S": "2",
    }
    with local_stack(tmp_path_factory.mktemp("e2e") / "data", base_model, env) as local:
        yield local


def _answering_version(stack: LocalStack, model: str) -> str | None:
    response = httpx.post(
        f"{stack.server_url}/v1/completions",
        headers={"Authorization": f"Bearer {stack.app_key}"},
        json={"model": model, "prompt": "Order:", "max_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    version: str | None = response.headers.get("x-loraplex-adapter-version")
    return version


def _registry(stack: LocalStack) -> Any:
    return open_registry(SharedSettings(data_dir=stack.data_dir))


def test_release_promote_survive_kills_and_roll_back(stack: LocalStack, tmp_path: Path) -> None:
    lines: list[str] = []
    # -- version 1: trained, evaluated against the base model, promoted ------------------------
    assert run_release(stack, release_yaml(tmp_path, seed=1), lines) == 0, "\n".join(lines)
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
        target=lambda: result.setdefault(
            "code", run_release(stack, release_yaml(tmp_path, 2), lines)
        )
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


# Events each process must log for an operator to reconstruct the release from the logs alone.
EXPECTED_EVENTS = {
    "trainer-api": ["file.validated", "job.created"],
    "trainer-worker": [
        "worker.started",
        "job.claimed",
        "job.started",
        "job.progress",
        "job.checkpoint",
        "job.succeeded",
    ],
    "evaluator-worker": [
        "evaluation.claimed",
        "evaluation.started",
        "evaluation.stage_started",
        "evaluation.stage_finished",
        "gate.decision",
        "evaluation.finished",
        "alias.moved",
    ],
    "server": [
        "engine.started",
        "engine.ready",
        "adapter.loaded",
        "adapter.unloaded",
        "alias.serving",
        "alias.moved",
        "requests.summary",
    ],
}


def test_logs_tell_the_release(stack: LocalStack) -> None:
    """Runs after the release above, on the same stack's log files (text, the default form)."""
    logs = stack.data_dir / "logs"
    for service, names in EXPECTED_EVENTS.items():
        text = (logs / f"{service}.log").read_text(errors="replace")
        seen = {e["event"] for e in parse_lines(text)}
        missing = [n for n in names if n not in seen]
        assert not missing, f"{service}.log lacks {missing}; it has {sorted(seen)}"
    worker = (logs / "evaluator-worker.log").read_text()
    moved = [ln for ln in worker.splitlines() if " alias.moved " in ln]
    # The gate moved it, on behalf of the release flow's key (the operator).
    assert any(
        'actor="loraplex-gate for operator"' in ln and "from_version=flow@v1" in ln for ln in moved
    )
    server = (logs / "server.log").read_text()
    # The rollback went through the admin API: the server logs who moved the alias back.
    assert any("alias.moved" in ln and "to_version=flow@v1" in ln for ln in server.splitlines())
    trainer = (logs / "trainer-worker.log").read_text()
    assert "took_over_from=" in trainer  # the killed worker's job was taken over, and it says so
    for path in logs.glob("*.log"):
        assert stack.admin_key not in path.read_text(errors="replace"), path.name
