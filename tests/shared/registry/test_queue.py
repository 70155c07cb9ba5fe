"""Registry work queue: one row, one worker; silent owners are taken over; a taken-over owner's
writes are refused (fencing by worker id *and* attempt)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from shared.registry.db import Registry
from shared.registry.models import EvaluationRunRow, TrainingJobRow, utcnow
from shared.registry.queue import (
    Claim,
    ClaimLost,
    claim_next,
    guarded_update,
    heartbeat,
    release,
    require,
)


def _job(registry: Registry, job_id: str) -> None:
    with registry.session() as s:
        s.add(
            TrainingJobRow(
                id=job_id, status="queued", base_model="m", adapter_name="a", training_file="f"
            )
        )


def _silence(registry: Registry, job_id: str) -> None:
    with registry.session() as s:
        row = s.get(TrainingJobRow, job_id)
        assert row is not None
        row.heartbeat_at = utcnow() - timedelta(minutes=5)


def test_each_job_goes_to_exactly_one_of_many_workers(registry: Registry) -> None:
    for i in range(4):
        _job(registry, f"job-{i}")
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with registry.session() as s:
                claim = claim_next(s, TrainingJobRow, name, stale_after_s=60)
            if claim is None:
                return
            with lock:
                claimed.append((claim.row_id, name))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(job for job, _ in claimed) == [f"job-{i}" for i in range(4)]


def test_silent_owner_is_taken_over_and_every_write_of_it_is_refused(registry: Registry) -> None:
    _job(registry, "job-1")
    with registry.session() as s:
        first = claim_next(s, TrainingJobRow, "w1", stale_after_s=60)
    assert first is not None and first.attempt == 1 and first.took_over_from is None
    with registry.session() as s:
        assert claim_next(s, TrainingJobRow, "w2", stale_after_s=60) is None
    _silence(registry, "job-1")
    with registry.session() as s:
        second = claim_next(s, TrainingJobRow, "w2", stale_after_s=60)
    assert second is not None and second.attempt == 2 and second.took_over_from == "w1"
    with registry.session() as s:
        assert not heartbeat(s, TrainingJobRow, first)
        assert not guarded_update(s, TrainingJobRow, first, status="failed")
        assert not release(s, TrainingJobRow, first)
        assert heartbeat(s, TrainingJobRow, second)
    with pytest.raises(ClaimLost), registry.session() as s:
        require(s, TrainingJobRow, first, status="succeeded")
    with registry.session() as s:
        row = s.get(TrainingJobRow, "job-1")
        assert row is not None and row.status == "running" and row.worker_id == "w2"


def test_the_same_worker_id_is_fenced_by_its_attempt(registry: Registry) -> None:
    # A restarted worker that reuses its id (same host and pid) is still a new owner.
    _job(registry, "job-1")
    with registry.session() as s:
        old = claim_next(s, TrainingJobRow, "w", stale_after_s=60)
    _silence(registry, "job-1")
    with registry.session() as s:
        new = claim_next(s, TrainingJobRow, "w", stale_after_s=60)
    assert old is not None and new is not None and new.attempt == old.attempt + 1
    with registry.session() as s:
        assert not guarded_update(s, TrainingJobRow, old, status="failed")
        assert guarded_update(s, TrainingJobRow, new, status="succeeded")


def test_a_released_row_is_claimable_at_once_and_statuses_narrow_writes(
    registry: Registry,
) -> None:
    _job(registry, "job-1")
    with registry.session() as s:
        claim = claim_next(s, TrainingJobRow, "w1", stale_after_s=60)
    assert claim is not None
    with registry.session() as s:
        assert not guarded_update(s, TrainingJobRow, claim, statuses=("queued",), status="x")
        assert release(s, TrainingJobRow, claim)
    with registry.session() as s:
        again = claim_next(s, TrainingJobRow, "w2", stale_after_s=60)
    assert again is not None and again.attempt == 2 and again.took_over_from is None


def test_claim_narrowed_by_where_keeps_the_status(registry: Registry) -> None:
    with registry.session() as s:
        s.add(
            EvaluationRunRow(
                id="eval-1",
                status="succeeded",
                candidate="a@v1",
                worker_id="dead",
                heartbeat_at=utcnow() - timedelta(minutes=5),
                attempts=1,
                promotion_state="pending",
            )
        )
    pending = EvaluationRunRow.promotion_state == "pending"
    with registry.session() as s:
        claim = claim_next(
            s,
            EvaluationRunRow,
            "w2",
            stale_after_s=60,
            waiting=(),
            running=("succeeded",),
            where=pending,
            set_status=None,
        )
    assert claim == Claim("eval-1", "w2", 2, "dead", "succeeded")
    with registry.session() as s:
        row = s.get(EvaluationRunRow, "eval-1")
        assert row is not None and row.status == "succeeded" and row.worker_id == "w2"


def test_heartbeat_and_release_can_be_narrowed_to_unfinished_statuses(registry: Registry) -> None:
    # The trainer's worker keeps beating until its thread stops: a finished row stays untouched.
    _job(registry, "job-1")
    with registry.session() as s:
        claim = claim_next(s, TrainingJobRow, "w1", stale_after_s=60)
    assert claim is not None
    unfinished = ("queued", "running")
    with registry.session() as s:
        assert heartbeat(s, TrainingJobRow, claim, statuses=unfinished)
        assert guarded_update(s, TrainingJobRow, claim, status="succeeded")
    with registry.session() as s:
        assert not heartbeat(s, TrainingJobRow, claim, statuses=unfinished)
        assert not release(s, TrainingJobRow, claim, statuses=unfinished)
    with registry.session() as s:
        row = s.get(TrainingJobRow, "job-1")
        assert row is not None and row.status == "succeeded" and row.worker_id == "w1"
