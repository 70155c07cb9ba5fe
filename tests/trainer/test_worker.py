"""Claiming jobs safely with several workers: compare-and-set, heartbeats, takeover, cancel.

These run without a model: they exercise the registry protocol only, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from services.trainer.config import TrainerSettings
from services.trainer.job_reporter import CLAIM_LOST, JobReporter
from services.trainer.jobs import add_event, cancel_job
from services.trainer.worker import Worker
from shared.registry.models import JobEventRow, TrainingJobRow, utcnow
from shared.settings import SharedSettings


@pytest.fixture
def tsettings(registry_settings: SharedSettings) -> TrainerSettings:
    return TrainerSettings(
        data_dir=registry_settings.data_dir,
        database_url=registry_settings.database_url,
        worker_stale_s=30,
        max_attempts=2,
    )


def make_jobs(worker: Worker, n: int) -> list[str]:
    ids = [f"ftjob-test{i:03d}" for i in range(n)]
    with worker.registry.session() as s:
        for job_id in ids:
            s.add(
                TrainingJobRow(
                    id=job_id,
                    status="validating_files",
                    base_model="smollm2-135m-instruct",
                    adapter_name="t",
                    training_file="file-x",
                    config={"training_file": "file-x"},
                )
            )
            s.flush()
            add_event(s, job_id, "created")
    return ids


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


def test_cancel_before_and_after_a_worker_claims(tsettings: TrainerSettings) -> None:
    w = Worker(tsettings, "w")
    first, second = make_jobs(w, 2)
    with w.registry.session() as s:
        assert cancel_job(s, first).status == "cancelled"
    assert w.claim() == second  # the cancelled job is never claimed
    with w.registry.session() as s:
        job = cancel_job(s, second)
        assert job.status == "validating_files" and job.cancel_requested
    assert JobReporter(w, second).should_stop() == "cancelled"
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
            self.submitted: list[tuple[str, str | None]] = []

        def submit(self, job_id: str, *, worker_id: str | None = None) -> str:
            self.submitted.append((job_id, worker_id))
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
    assert runner.submitted == [(job_id, "w")]
    with w.registry.session() as s:
        row = s.get(TrainingJobRow, job_id)
        assert row is not None and row.status == "failed" and row.error is not None
        assert row.error["type"] == "system_error" and "OOMKilled" in row.error["details"][0]
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


def test_event_kinds_drive_the_log_lines_and_rows_keep_their_types(
    tsettings: TrainerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    from services.trainer.recipes.context import EventKind

    w = Worker(tsettings, "w")
    (job_id,) = make_jobs(w, 1)
    reporter = JobReporter(w, job_id)
    with caplog.at_level(logging.INFO, logger="loraplex.trainer.worker"):
        # The wording is free: the kind, not the message's prefix, names the log line.
        reporter.event("resuming: step 3 of 9", type=EventKind.STARTED, data={"step": 3})
        reporter.event("data looks fine", type=EventKind.VALIDATION, data={})
        reporter.event("training started, or so this message says")
    names = [
        r.getMessage().split()[0] for r in caplog.records if r.name == "loraplex.trainer.worker"
    ]
    assert names == [
        "job.started",
        "job.data_validated",
    ]
    with w.registry.session() as s:
        rows = s.scalars(
            select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id)
        ).all()
        assert [r.type for r in rows] == ["message", "message", "validation", "message"]
    w.registry.dispose()
