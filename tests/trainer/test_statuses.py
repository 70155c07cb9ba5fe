"""Job statuses are one StrEnum whose values are OpenAI's, as the registry has always stored them."""

from __future__ import annotations

from services.trainer import jobs
from services.trainer.statuses import ACTIVE, TERMINAL, WAITING, JobStatus


def test_stored_values_are_openais() -> None:
    assert [s.value for s in JobStatus] == [
        "validating_files",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert set(ACTIVE) | set(TERMINAL) == set(JobStatus) and not set(ACTIVE) & set(TERMINAL)
    assert set(WAITING) < set(ACTIVE)


def test_a_status_is_its_string() -> None:
    assert str(JobStatus.RUNNING) == "running" and f"job.{JobStatus.FAILED}" == "job.failed"
    assert jobs.QUEUED is JobStatus.QUEUED  # the old names still import from jobs
