"""Claiming jobs safely with several workers: compare-and-set, heartbeats, takeover, cancel.

Most run without a model: they exercise the registry protocol only, on SQLite and PostgreSQL. The
slow ones run the API and workers as separate processes: a worker killed with SIGKILL mid-job is
replaced and the job resumes from its checkpoint and ends with exactly one adapter version; a
cancel stops training and keeps nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from services.trainer.config import TrainerSettings
from services.trainer.job_reporter import CLAIM_LOST, JobReporter
from services.trainer.worker import Worker
from shared.registry.adapters import list_versions
from shared.registry.db import open_registry
from shared.registry.models import TrainingJobRow, utcnow
from tests.trainer.conftest import BASE, Processes, make_jobs, tiny_hyperparameters, wait_for


def test_each_job_is_claimed_by_exactly_one_worker(tsettings: TrainerSettings) -> None:
    workers = [Worker(tsettings, worker_id=f"w{i}") for i in range(4)]
    ids = make_jobs(workers[0], 12)
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def drain(worker: Worker) -> None:
        while (job_id := worker.claim()) is not None:
            with lock:
                claimed.append((job_id, worker.worker_id))

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(job for job, _ in claimed)
    assert sorted(counts) == ids and set(counts.values()) == {1}
    with workers[0].registry.session() as s:
        for job_id, worker_id in claimed:
            row = s.get(TrainingJobRow, job_id)
            assert row is not None and row.worker_id == worker_id and row.attempts == 1
    for w in workers:
        w.registry.dispose()


def test_a_stale_claim_is_taken_over_and_the_old_worker_loses_it(
    tsettings: TrainerSettings,
) -> None:
    a, b = Worker(tsettings, "a"), Worker(tsettings, "b")
    (job_id,) = make_jobs(a, 1)
    assert a.claim() == job_id
    assert b.claim() is None  # fresh heartbeat: not claimable
    with a.registry.session() as s:
        s.execute(
            update(TrainingJobRow)
            .where(TrainingJobRow.id == job_id)
            .values(status="running", heartbeat_at=utcnow() - timedelta(seconds=60))
        )
    assert b.claim() == job_id
    with a.registry.session() as s:
        assert not a.guarded_update(s, job_id, heartbeat_at=utcnow())
    assert JobReporter(a, job_id).should_stop() == CLAIM_LOST
    with b.registry.session() as s:
        row = s.get(TrainingJobRow, job_id)
        assert row is not None and row.worker_id == "b" and row.attempts == 2
    a.registry.dispose()
    b.registry.dispose()


def test_too_many_attempts_fail_the_job_as_a_system_error(tsettings: TrainerSettings) -> None:
    w = Worker(tsettings, "w")
    (job_id,) = make_jobs(w, 1)
    with w.registry.session() as s:
        s.execute(update(TrainingJobRow).where(TrainingJobRow.id == job_id).values(attempts=2))
    assert w.claim() == job_id
    w.process(job_id)
    with w.registry.session() as s:
        row = s.get(TrainingJobRow, job_id)
        assert row is not None and row.status == "failed"
        assert row.error is not None and row.error["type"] == "system_error"
    w.registry.dispose()


def test_a_job_whose_files_vanished_fails_cleanly(tsettings: TrainerSettings) -> None:
    w = Worker(tsettings, "w")
    (job_id,) = make_jobs(w, 1)
    with w.registry.session() as s:
        s.execute(
            update(TrainingJobRow)
            .where(TrainingJobRow.id == job_id)
            .values(config={"training_file": "file-x", "model": "smollm2-135m-instruct"})
        )
    assert w.claim() == job_id
    w.process(job_id)
    with w.registry.session() as s:
        row = s.get(TrainingJobRow, job_id)
        assert row is not None and row.status == "failed"
        assert row.error is not None and "file-x" in row.error["message"]
    w.registry.dispose()


def test_kubernetes_mode_follows_the_job_and_fails_it_if_the_pod_did_not_finish(
    tsettings: TrainerSettings,
) -> None:
    from services.trainer.k8s_runner import JobPhase, JobState

    class FakeRunner:
        def __init__(self) -> None:
            self.submitted: list[tuple[str, str | None, int]] = []

        def submit(self, job_id: str, *, worker_id: str | None = None, processes: int = 1) -> str:
            self.submitted.append((job_id, worker_id, processes))
            return "loraplex-train-x"

        def follow(self, name: str) -> JobState:
            return JobState(name, JobPhase.FAILED, reason="BackoffLimitExceeded")

        def diagnose(self, name: str) -> list[str]:
            return ["pod p: OOMKilled (exit code 137)"]

    w = Worker(tsettings, "w")
    runner = FakeRunner()
    w.kubernetes = runner  # type: ignore[assignment]
    (job_id,) = make_jobs(w, 1)
    assert w.claim() == job_id
    w.process(job_id)
    assert runner.submitted == [(job_id, "w", 1)]
    with w.registry.session() as s:
        row = s.get(TrainingJobRow, job_id)
        assert row is not None and row.status == "failed" and row.error is not None
        assert row.error["type"] == "system_error" and "OOMKilled" in row.error["details"][0]
    w.registry.dispose()


def _multi_process_job(
    w: Worker, monkeypatch: pytest.MonkeyPatch, rank_script: str, groups: list[Any] | None = None
) -> str:
    """A claimed job with ``processes: 2`` whose rank group is ``rank_script`` (no model)."""
    from services.trainer.launch import RankGroup

    (job_id,) = make_jobs(w, 1)
    with w.registry.session() as s:
        s.execute(
            update(TrainingJobRow)
            .where(TrainingJobRow.id == job_id)
            .values(config={"training_file": "file-x", "processes": 2})
        )

    def start(settings: Any, job: str, n: int, *, scratch: Path, **_: Any) -> RankGroup:
        assert (job, n) == (job_id, 2)
        errors = scratch / "ranks"
        errors.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-c", rank_script, str(errors)]
        group = RankGroup(subprocess.Popen(command, start_new_session=True), errors)
        if groups is not None:
            groups.append(group)
        return group

    monkeypatch.setattr(RankGroup, "start", staticmethod(start))
    assert w.claim() == job_id
    return job_id


def test_a_failing_rank_fails_the_job_with_its_error(
    tsettings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = Worker(tsettings, "w")
    script = (
        "import json, sys, pathlib; pathlib.Path(sys.argv[1], 'rank-1.json').write_text("
        "json.dumps({'rank': 1, 'error': 'RuntimeError: out of memory'})); sys.exit(1)"
    )
    job_id = _multi_process_job(w, monkeypatch, script)
    w.process(job_id)
    with w.registry.session() as s:
        row = s.get(TrainingJobRow, job_id)
        assert row is not None and row.status == "failed" and row.error is not None
        assert row.error["code"] == "rank_failed"
        assert "rank 1 of 2: RuntimeError: out of memory" in row.error["message"]
    w.registry.dispose()


def test_cancel_kills_the_rank_group(
    tsettings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = Worker(tsettings, "w")
    groups: list[Any] = []
    job_id = _multi_process_job(w, monkeypatch, "import time; time.sleep(600)", groups)

    def cancel_soon() -> None:
        time.sleep(1.5)
        with w.registry.session() as s:
            s.execute(
                update(TrainingJobRow)
                .where(TrainingJobRow.id == job_id)
                .values(cancel_requested=True)
            )

    threading.Thread(target=cancel_soon, daemon=True).start()
    started = time.monotonic()
    w.process(job_id)
    assert time.monotonic() - started < 30
    with w.registry.session() as s:
        row = s.get(TrainingJobRow, job_id)
        assert row is not None and row.status == "cancelled"
    assert groups[0].poll() is not None  # the whole group was killed, not left running
    w.registry.dispose()


def test_a_restarted_worker_with_the_same_id_fences_its_old_claim(
    tsettings: TrainerSettings,
) -> None:
    # Same host and pid after a restart: the attempt, not the worker id, tells the claims apart.
    old, new = Worker(tsettings, "w"), Worker(tsettings, "w")
    (job_id,) = make_jobs(old, 1)
    assert old.claim() == job_id
    with old.registry.session() as s:
        s.execute(
            update(TrainingJobRow)
            .where(TrainingJobRow.id == job_id)
            .values(status="running", heartbeat_at=utcnow() - timedelta(seconds=60))
        )
    assert new.claim() == job_id
    with old.registry.session() as s:
        assert not old.guarded_update(s, job_id, status="failed")
    assert JobReporter(old, job_id).should_stop() == CLAIM_LOST
    assert JobReporter(new, job_id).should_stop() is None
    old.registry.dispose()
    new.registry.dispose()


def job_row(settings: TrainerSettings, job_id: str) -> TrainingJobRow:
    registry = open_registry(settings)
    try:
        with registry.session() as s:
            row = s.get(TrainingJobRow, job_id)
            assert row is not None
            s.expunge(row)
            return row
    finally:
        registry.dispose()


def _upload_and_create(url: str, path: Path, hyperparameters: dict[str, Any], suffix: str) -> str:
    with path.open("rb") as fh:
        file_id = httpx.post(
            f"{url}/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"}
        ).json()["id"]
    body = {
        "model": BASE,
        "training_file": file_id,
        "suffix": suffix,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }
    resp = httpx.post(f"{url}/v1/fine_tuning/jobs", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _events(url: str, job_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000})
    return list(reversed(resp.json()["data"]))


@pytest.mark.slow
def test_kill_9_worker_resumes_from_checkpoint_with_one_version(
    procs: Processes, trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    url = procs.api()
    job_id = _upload_and_create(
        url, sft_file, tiny_hyperparameters(max_steps=4, save_steps=2), "resumed"
    )
    first = procs.worker()
    wait_for(
        lambda: any(
            (e.get("data") or {}).get("kind") == "checkpoint" for e in _events(url, job_id)
        ),
        600,
        "the first checkpoint",
    )
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert job_row(trainer_model_settings, job_id).status == "running"
    procs.worker()
    wait_for(
        lambda: job_row(trainer_model_settings, job_id).status in ("succeeded", "failed"),
        600,
        "the resumed job to finish",
    )
    row = job_row(trainer_model_settings, job_id)
    assert row.status == "succeeded", (row.error, procs.logs())
    assert row.attempts == 2 and row.result_version_id == "resumed@v1"
    messages = [e["message"] for e in _events(url, job_id)]
    assert any("taking over from" in m for m in messages)
    assert any(m.startswith("resuming from checkpoint-") for m in messages)
    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        (version,) = list_versions(s, "resumed")
        steps = [step for step, _ in version.manifest["loss_curve"]]
    registry.dispose()
    assert steps == [1, 2, 3, 4]
    assert not (trainer_model_settings.work_dir / job_id).exists()


@pytest.mark.slow
def test_cancel_stops_at_the_next_step_and_keeps_nothing(
    procs: Processes, trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    url = procs.api()
    job_id = _upload_and_create(
        url, sft_file, tiny_hyperparameters(max_steps=40, save_steps=1), "cancelled"
    )
    procs.worker()
    wait_for(
        lambda: any(e["type"] == "metrics" for e in _events(url, job_id)), 600, "training to start"
    )
    resp = httpx.post(f"{url}/v1/fine_tuning/jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["cancel_requested"]
    wait_for(
        lambda: job_row(trainer_model_settings, job_id).status == "cancelled", 300, "cancellation"
    )
    steps = [e["data"]["step"] for e in _events(url, job_id) if e["type"] == "metrics"]
    assert max(steps) < 40
    assert not (trainer_model_settings.work_dir / job_id).exists()
    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        assert list_versions(s, "cancelled") == []
    registry.dispose()
    assert (
        json.loads(httpx.get(f"{url}/v1/fine_tuning/jobs/{job_id}").text)["fine_tuned_model"]
        is None
    )
