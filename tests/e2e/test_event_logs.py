"""The services' logs in JSON form (``LORAPLEX_LOG_FORMAT=json``), end to end: one short release
and one job that fails, on a real local stack, then every log file read back.

Each line must be one JSON object with ``ts``, ``level``, ``service`` and ``event``; the domain
events an operator needs to reconstruct the release (file validated, job claimed / started /
checkpoint / finished / failed, evaluation stages, the gate decision with its reasons, the alias
move with its actor, engine started / ready, adapter loaded, the request summary) must be there
with their ids; and no configured secret may appear anywhere, in any log of any process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.localstack import LocalStack
from shared.basemodel import ResolvedBaseModel
from shared.errors import SystemFailure
from tests.e2e.releases import local_stack, release_yaml, run_release

pytestmark = pytest.mark.slow

JUDGE_KEY = "judge-key-that-must-never-be-logged"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, base_model: ResolvedBaseModel
) -> Iterator[LocalStack]:
    env = {
        "LORAPLEX_LOG_FORMAT": "json",
        "LORAPLEX_KV_CACHE_GIB": "1",
        "LORAPLEX_RECONCILE_INTERVAL_S": "0.5",
        "LORAPLEX_REQUEST_SUMMARY_S": "1",
        "LORAPLEX_JUDGE_API_KEY": JUDGE_KEY,
    }
    with local_stack(tmp_path_factory.mktemp("logs") / "data", base_model, env) as local:
        yield local


def _events(path: Path) -> list[dict[str, Any]]:
    docs = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue  # a library writing straight to stderr (tqdm), not a log record
        doc = json.loads(line)
        assert {"ts", "level", "service", "event"} <= set(doc), line
        docs.append(doc)
    return docs


def _find(docs: list[dict[str, Any]], name: str, **fields: Any) -> dict[str, Any]:
    for doc in docs:
        if doc["event"] == name and all(doc.get(k) == v for k, v in fields.items()):
            return doc
    seen = sorted({d["event"] for d in docs})
    raise AssertionError(f"no {name} with {fields}; events: {seen}")


def test_a_release_and_a_failed_job_in_json_logs(stack: LocalStack, tmp_path: Path) -> None:
    lines: list[str] = []
    assert run_release(stack, release_yaml(tmp_path, seed=3, adapter="logged"), lines) == 0, (
        "\n".join(lines)
    )
    # A job that fails in the worker: every example is longer than max_length and dropped.
    bad = release_yaml(tmp_path, seed=4, adapter="broken", max_length=16)
    with pytest.raises(SystemFailure, match=r"training job \S+ failed"):
        run_release(stack, bad, lines)
    httpx.post(
        f"{stack.server_url}/v1/completions",
        headers={"Authorization": f"Bearer {stack.app_key}"},
        json={"model": "logged", "prompt": "Order:", "max_tokens": 2},
        timeout=60,
    ).raise_for_status()
    stack.stop()  # flush and close every log

    logs = stack.data_dir / "logs"
    trainer_api = _events(logs / "trainer-api.log")
    trainer = _events(logs / "trainer-worker.log")
    evaluator = _events(logs / "evaluator-worker.log")
    server = _events(logs / "server.log")

    upload = _find(trainer_api, "file.validated", purpose="fine-tune")
    assert upload["file"].startswith("file-") and upload["rows"] == 24
    assert all(d["service"] == "trainer-worker" for d in trainer)
    claimed = _find(trainer, "job.claimed", attempt=1)
    job = claimed["job"]
    _find(trainer, "job.started", job=job)
    _find(trainer, "job.checkpoint", job=job)
    done = _find(trainer, "job.succeeded", job=job, version="logged@v1")
    assert done["train_loss"] > 0 and done["tokens_per_s"] > 0
    failed = _find(trainer, "job.failed")
    assert failed["job"] != job and failed["error"] and failed["level"] == "ERROR"

    run = _find(evaluator, "evaluation.started", candidate="logged@v1")["run"]
    _find(evaluator, "evaluation.stage_started", run=run)
    assert _find(evaluator, "evaluation.stage_finished", run=run)["seconds"] >= 0
    decision = _find(evaluator, "gate.decision", run=run, decision="pass")
    assert decision["reasons"] and decision["policy_sha256"]
    moved = _find(evaluator, "alias.moved", alias="logged:prod", to_version="logged@v1")
    assert moved["actor"] == "loraplex-gate for operator" and moved["evaluation"] == run

    started = _find(server, "engine.started", engine="engine-0")
    assert started["dtype"] in ("bfloat16", "float32", "auto") and started["dtype_reason"]
    _find(server, "engine.ready", engine="engine-0")
    _find(server, "adapter.loaded", version="logged@v1")
    _find(server, "alias.serving", alias="logged:prod", version="logged@v1")
    summary = _find(server, "requests.summary")
    assert summary["requests"] >= 1 and isinstance(summary["by_model"], dict)

    for path in [*logs.glob("*.log"), *(stack.data_dir / "server" / "logs").glob("*.log")]:
        text = path.read_text(errors="replace")
        for secret in (*stack.keys.values(), JUDGE_KEY):
            assert secret not in text, f"{secret} in {path.name}"
