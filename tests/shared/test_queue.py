"""Registry work queue: one row, one worker; silent owners are taken over."""

from __future__ import annotations

import threading
from datetime import timedelta

from shared.registry.db import Registry
from shared.registry.models import TrainingJobRow, utcnow
from shared.registry.queue import claim_next, heartbeat


def _job(registry: Registry, job_id: str) -> None:
    with registry.session() as s:
        s.add(
            TrainingJobRow(
                id=job_id, status="queued", base_model="m", adapter_name="a", training_file="f"
            )
        )


def test_each_job_goes_to_exactly_one_of_many_workers(registry: Registry) -> None:
    for i in range(4):
        _job(registry, f"job-{i}")
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with registry.session() as s:
                row = claim_next(s, TrainingJobRow, name, stale_after_s=60)
                if row is None:
                    return
                with lock:
                    claimed.append((row.id, name))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(job for job, _ in claimed) == [f"job-{i}" for i in range(4)]


def test_silent_owner_is_taken_over_and_loses_its_heartbeat(registry: Registry) -> None:
    _job(registry, "job-1")
    with registry.session() as s:
        assert claim_next(s, TrainingJobRow, "w1", stale_after_s=60) is not None
    with registry.session() as s:
        assert claim_next(s, TrainingJobRow, "w2", stale_after_s=60) is None
        s.get(TrainingJobRow, "job-1").heartbeat_at = utcnow() - timedelta(minutes=5)  # type: ignore[union-attr]
    with registry.session() as s:
        row = claim_next(s, TrainingJobRow, "w2", stale_after_s=60)
        assert row is not None and row.worker_id == "w2"
    with registry.session() as s:
        assert not heartbeat(s, TrainingJobRow, "job-1", "w1")
        assert heartbeat(s, TrainingJobRow, "job-1", "w2")
