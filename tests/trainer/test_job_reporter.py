"""``services.trainer.job_reporter``: a running job's events go to the registry (rows keep their
types, the kind names the log line, the data report's near-duplicate count reaches the file), and
stop requests come from it (cancel, a lost claim, the worker shutting down)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from services.trainer.config import TrainerSettings
from services.trainer.job_reporter import CLAIM_LOST, WORKER_STOPPING, JobReporter
from services.trainer.recipes.context import EventKind
from services.trainer.worker import Worker
from shared.registry.models import DatasetRow, JobEventRow, TrainingJobRow
from tests.trainer.conftest import make_jobs


def _rows(w: Worker, job_id: str) -> list[JobEventRow]:
    with w.registry.session() as s:
        rows = list(
            s.scalars(
                select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id)
            )
        )
        s.expunge_all()
    return rows


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


def test_the_validation_report_puts_its_near_duplicate_count_into_the_file(
    tsettings: TrainerSettings,
) -> None:
    w = Worker(tsettings, "w")
    (job_id,) = make_jobs(w, 1)
    with w.registry.session() as s:
        s.add(
            DatasetRow(
                id="file-x",
                filename="train.jsonl",
                purpose="fine-tune",
                format="sft",
                sha256="0" * 64,
                row_count=3,
                bytes=10,
                report={"examples": 3, "near_duplicates": None},
            )
        )
    report = {"near_duplicates": {"count": 2, "threshold": 0.9, "complete": False}}
    JobReporter(w, job_id).event("data validated", type=EventKind.VALIDATION, data=report)
    # Other kinds carrying the same shape do not touch the file.
    other = {"near_duplicates": {"count": 7}}
    JobReporter(w, job_id).event("not a report", type=EventKind.MESSAGE, data=other)
    with w.registry.session() as s:
        row = s.get(DatasetRow, "file-x")
        assert row is not None
        assert row.report == {
            "examples": 3,
            "near_duplicates": 2,
            "near_duplicate_threshold": 0.9,
            "near_duplicates_complete": False,
        }
    assert [r.type for r in _rows(w, job_id)][-2:] == ["validation", "message"]
    w.registry.dispose()


def test_metrics_keep_the_latest_losses_and_log_progress(
    tsettings: TrainerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    w = Worker(tsettings, "w")
    (job_id,) = make_jobs(w, 1)
    reporter = JobReporter(w, job_id)
    train = {"step": 2, "total_steps": 9, "train_loss": 1.5, "tokens_per_second": 40.0}
    with caplog.at_level(logging.INFO, logger="loraplex.trainer.worker"):
        reporter.event("step 2", type=EventKind.METRICS, data=train)
        reporter.event("eval", type=EventKind.METRICS, data={"step": 2, "valid_loss": 1.7})
        reporter.event(
            "saved", type=EventKind.CHECKPOINT, data={"step": 2, "metrics": {"train_loss": 1.5}}
        )
    assert reporter.last_metrics == {"train_loss": 1.5, "tokens_per_s": 40.0, "valid_loss": 1.7}
    lines = [r.getMessage() for r in caplog.records if r.name == "loraplex.trainer.worker"]
    assert [line.split()[0] for line in lines] == ["job.progress", "job.checkpoint"]
    assert "step=2" in lines[0] and "train_loss=1.5" in lines[0]
    assert [r.type for r in _rows(w, job_id)][-3:] == ["metrics", "metrics", "checkpoint"]
    w.registry.dispose()


def test_stop_requests_come_from_shutdown_a_lost_claim_and_cancel(
    tsettings: TrainerSettings,
) -> None:
    w = Worker(tsettings, "w")
    (job_id,) = make_jobs(w, 1)
    assert w.claim() == job_id
    reporter = JobReporter(w, job_id)
    assert reporter.should_stop() is None
    w.stopping.set()
    assert reporter.should_stop() == WORKER_STOPPING
    w.stopping.clear()
    with w.registry.session() as s:
        job = s.get(TrainingJobRow, job_id)
        assert job is not None
        job.cancel_requested = True
    assert reporter.should_stop() == "cancelled"
    with w.registry.session() as s:
        job = s.get(TrainingJobRow, job_id)
        assert job is not None
        job.cancel_requested, job.worker_id = False, "someone-else"
    assert reporter.should_stop() == CLAIM_LOST
    # A lost claim stays lost, even if the row looked right again.
    with w.registry.session() as s:
        job = s.get(TrainingJobRow, job_id)
        assert job is not None
        job.worker_id = "w"
    assert reporter.should_stop() == CLAIM_LOST
    w.registry.dispose()


def test_a_phase_is_written_only_under_the_workers_claim(tsettings: TrainerSettings) -> None:
    holder, other = Worker(tsettings, "holder"), Worker(tsettings, "other")
    (job_id,) = make_jobs(holder, 1)
    assert holder.claim() == job_id
    before = len(_rows(holder, job_id))
    JobReporter(other, job_id).phase("running")
    with holder.registry.session() as s:
        assert s.get(TrainingJobRow, job_id).status == "validating_files"  # type: ignore[union-attr]
    assert len(_rows(holder, job_id)) == before
    JobReporter(holder, job_id).phase("running")
    with holder.registry.session() as s:
        assert s.get(TrainingJobRow, job_id).status == "running"  # type: ignore[union-attr]
    assert _rows(holder, job_id)[-1].message == "job status: running"
    holder.registry.dispose()
    other.registry.dispose()
