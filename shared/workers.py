"""What the trainer's and the evaluator's queue workers share around :mod:`shared.registry.queue`.

A worker's id, the log line of a claim, the heartbeat thread that keeps a claim alive (and notices
when it is lost), the poll loop that claims and runs work until stopped, and the graceful stop on
SIGTERM/SIGINT. What a claim, a beat or a run *means* stays with each service.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from shared.logs import event
from shared.registry.db import Registry
from shared.registry.queue import Claim

T = TypeVar("T")


def new_worker_id() -> str:
    """Unique per process *and* instance: a restarted worker with a reused pid is another owner."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def log_claimed(log: logging.Logger, name: str, claim: Claim, *, key: str) -> None:
    """The ``<name>`` event of a new claim (``key``: the field naming the row, e.g. ``job``), with
    the previous owner when this claim took the row over from a silent worker."""
    fields: dict[str, Any] = {
        key: claim.row_id,
        "worker": claim.worker_id,
        "attempt": claim.attempt,
    }
    if claim.took_over_from:
        fields["took_over_from"] = claim.took_over_from
    event(log, name, **fields)


@contextmanager
def heartbeating(
    registry: Registry,
    beat: Callable[[Session], bool],
    every_s: float,
    lost: threading.Event,
    *,
    label: str,
    log: logging.Logger,
) -> Iterator[None]:
    """Run ``beat`` in its own transaction every ``every_s`` seconds while the block runs; when a
    beat returns False (the claim is not ours any more) set ``lost`` and beat no more.

    A beat that raises (a busy database) is logged and the next one retries: it must not kill the
    work it keeps alive."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every_s):
            try:
                with registry.session() as session:
                    if not beat(session):
                        lost.set()
                        return
            except Exception:
                log.warning("heartbeat for %s failed", label, exc_info=True)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def poll(
    claim: Callable[[], T | None],
    process: Callable[[T], None],
    stopping: threading.Event,
    *,
    poll_s: float,
    until_idle: bool = False,
    most: int | None = None,
) -> int:
    """Claim and process work until ``stopping`` is set, waiting ``poll_s`` whenever the queue is
    empty; with ``until_idle`` stop at the first empty look instead, and stop after ``most`` items.
    Returns how many were processed."""
    ran = 0
    while not stopping.is_set():
        item = claim()
        if item is None:
            if until_idle:
                break
            stopping.wait(poll_s)
            continue
        process(item)
        ran += 1
        if most is not None and ran >= most:
            break
    return ran


def stop_on_signals(stopping: threading.Event, log: logging.Logger, what_then: str) -> None:
    """Set ``stopping`` on SIGTERM or SIGINT (graceful: the worker gives its work back or finishes
    it, then exits 0), logging ``what_then``."""

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %s: %s", signum, what_then)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
