"""The queue workers' shared loop: the poll loop stops when asked, when idle (if told to) and after
``most`` items; the heartbeat thread beats until the block ends, flags a lost claim and survives
a failing beat; a claim's event names the previous owner only on a takeover."""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy.orm import Session

from shared.registry.db import Registry
from shared.registry.queue import Claim
from shared.workers import heartbeating, log_claimed, new_worker_id, poll


def test_poll_runs_until_idle_or_most() -> None:
    queue = ["a", "b", "c"]
    done: list[str] = []

    def claim() -> str | None:
        return queue.pop(0) if queue else None

    assert poll(claim, done.append, threading.Event(), poll_s=0, until_idle=True) == 3
    assert done == ["a", "b", "c"]
    queue[:] = ["d", "e"]
    assert poll(claim, done.append, threading.Event(), poll_s=0, until_idle=True, most=1) == 1
    assert done[-1] == "d" and queue == ["e"]


def test_poll_waits_on_an_empty_queue_until_stopped() -> None:
    stopping = threading.Event()
    looks = 0

    def claim() -> str | None:
        nonlocal looks
        looks += 1
        if looks == 3:
            stopping.set()
        return None

    assert poll(claim, lambda _: None, stopping, poll_s=0.001) == 0
    assert looks == 3


def test_heartbeating_beats_and_flags_a_lost_claim(registry: Registry) -> None:
    lost = threading.Event()
    beats: list[int] = []

    def beat(session: Session) -> bool:
        beats.append(1)
        return len(beats) < 3  # the third beat finds the claim gone

    log = logging.getLogger("test")
    with heartbeating(registry, beat, 0.01, lost, label="job-1", log=log):
        assert lost.wait(5)
    assert len(beats) == 3


def test_a_failing_beat_is_retried(registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    lost = threading.Event()
    calls: list[int] = []

    def beat(session: Session) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database busy")
        return False

    with heartbeating(registry, beat, 0.01, lost, label="run-1", log=logging.getLogger("test")):
        assert lost.wait(5)
    assert len(calls) == 2
    assert "heartbeat for run-1 failed" in caplog.text


def test_the_claim_event_names_a_taken_over_owner(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.workers")
    with caplog.at_level(logging.INFO, logger="test.workers"):
        log_claimed(log, "job.claimed", Claim("job-1", "w2", 2, "w1"), key="job")
        log_claimed(log, "job.claimed", Claim("job-2", "w2", 1), key="job")
    first, second = (r.getMessage() for r in caplog.records)
    assert first == "job.claimed job=job-1 worker=w2 attempt=2 took_over_from=w1"
    assert second == "job.claimed job=job-2 worker=w2 attempt=1"


def test_worker_ids_differ_within_one_process() -> None:
    assert new_worker_id() != new_worker_id()
