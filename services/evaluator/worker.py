"""The evaluation worker: runs queued evaluations from the registry's fenced queue.

Claiming, heartbeats and every write go through ``shared/registry/queue.py``: a claim increments
the run's ``attempts`` and each later write names this worker *and* that attempt. A running run
whose heartbeat is older than ``worker_stale_s`` is claimable by anyone (its worker died, or
paused long enough to look dead); if the old worker turns out to be alive, its next write matches
nothing, so it stops and touches nothing: it neither stores a second result, nor promotes, nor
fails the run under the new owner.

A run whose pass was stored but whose alias move never happened (``promotion_state = pending``,
its worker died in between) is claimed the same way and the move is finished.

SIGTERM (or SIGINT) stops the worker gracefully: the current run is given back to the queue at its
next progress step (or finished, if it is already storing or promoting) and the process exits 0.
"""

from __future__ import annotations

import functools
import logging
import threading

from sqlalchemy.orm import Session

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.stages import Tracker, stages
from services.evaluator.statuses import PromotionState, RunStatus
from shared.logs import event, mask_url
from shared.registry import queue
from shared.registry.db import Registry, open_registry
from shared.registry.models import EvaluationRunRow
from shared.registry.queue import Claim, ClaimLost
from shared.workers import heartbeating, log_claimed, new_worker_id, poll, stop_on_signals

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3  # claims of one run that did not end in a graceful release


class Worker:
    def __init__(
        self,
        settings: EvaluatorSettings,
        registry: Registry | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or open_registry(settings)
        self.worker_id = worker_id or new_worker_id()
        self.stopping = threading.Event()
        self._lost = threading.Event()
        self._progress = (0.0, "")

    # -- queue ----------------------------------------------------------------------------------
    def claim(self) -> Claim | None:
        """A pending promotion left behind first (quick, and it unblocks an alias), then the
        oldest queued run or a running one whose worker went silent."""
        stale = self.settings.worker_stale_s
        with self.registry.session() as session:
            claim = queue.claim_next(
                session,
                EvaluationRunRow,
                self.worker_id,
                stale_after_s=stale,
                waiting=(),
                running=(RunStatus.SUCCEEDED,),
                where=EvaluationRunRow.promotion_state == PromotionState.PENDING,
                set_status=None,
            ) or queue.claim_next(session, EvaluationRunRow, self.worker_id, stale_after_s=stale)
        if claim is not None:
            log_claimed(log, "evaluation.claimed", claim, key="run")
        return claim

    def _release(self, claim: Claim) -> None:
        """Give the run back (worker stopping); a graceful release does not count as a failure."""
        with self.registry.session() as session:
            row = session.get(EvaluationRunRow, claim.row_id)
            config = dict(row.config or {}) if row is not None else {}
            config["released"] = int(config.get("released", 0)) + 1
            released = queue.release(
                session, EvaluationRunRow, claim, config=config, progress=0.0, stage=None
            )
        if released:
            event(log, "evaluation.released", run=claim.row_id, worker=self.worker_id)

    # -- running --------------------------------------------------------------------------------
    def _on_progress(self, fraction: float, stage: str) -> None:
        self._progress = (fraction, stage)
        # The runner calls this between items: the place to stop when the run is not ours any
        # more, or the worker is asked to stop.
        if self._lost.is_set():
            raise ClaimLost(f"evaluation {stage}: another worker owns the run now")
        if self.stopping.is_set():
            raise service.WorkerStopping("worker stopping")

    def _beat(self, session: Session, claim: Claim) -> bool:
        fraction, stage = self._progress
        row = session.get(EvaluationRunRow, claim.row_id)
        if row is not None and row.status != RunStatus.RUNNING:
            return queue.heartbeat(session, EvaluationRunRow, claim)
        return queue.heartbeat(session, EvaluationRunRow, claim, progress=fraction, stage=stage)

    def process(self, claim: Claim) -> None:
        run_id = claim.row_id
        self._lost.clear()
        self._progress = (0.0, "")
        row = service.get_run(self.registry, run_id)
        if (
            row.status == RunStatus.SUCCEEDED
        ):  # a stored pass whose alias move a dead worker left pending
            try:
                promotion = service.finish_promotion(self.registry, claim)
            except ClaimLost:
                event(log, "evaluation.abandoned", logging.WARNING, run=run_id, stage="promotion")
                return
            event(
                log,
                "promotion.resumed",
                run=run_id,
                alias=(promotion or {}).get("alias"),
                state=(promotion or {}).get("state"),
            )
            return
        interrupted = claim.attempt - int((row.config or {}).get("released", 0))
        if interrupted > MAX_ATTEMPTS:
            error = {
                "code": "worker_lost",
                "type": "server_error",
                "param": None,
                "message": f"the run's worker stopped responding {interrupted - 1} times "
                f"(last {claim.took_over_from}); giving up",
            }
            service.fail_run(self.registry, claim, error)
            event(log, "evaluation.failed", logging.WARNING, run=run_id, error=error["message"])
            return
        beat = functools.partial(self._beat, claim=claim)
        every_s = self.settings.worker_heartbeat_s
        with heartbeating(self.registry, beat, every_s, self._lost, label=run_id, log=log):
            try:
                request = EvaluationCreate.model_validate((row.config or {}).get("request", {}))
                prepared = service.prepare(self.settings, self.registry, request, run_id)
                tracker = Tracker(stages(prepared.plan), self._on_progress, run_id=run_id)
                service.execute(self.settings, self.registry, prepared, tracker, claim=claim)
            except ClaimLost as exc:
                # Taken over while alive (e.g. paused past worker_stale_s): the new owner's rows
                # are not ours to touch.
                event(log, "evaluation.abandoned", logging.WARNING, run=run_id, reason=str(exc))
            except service.WorkerStopping:
                self._release(claim)
            except Exception as exc:
                event(log, "evaluation.failed", logging.WARNING, run=run_id, error=str(exc)[:500])
                service.fail_run(self.registry, claim, exc)  # refused (no-op) when not ours now

    def serve(self, *, once: bool = False) -> int:
        """Claim and run evaluations until stopped (or until idle, with ``once``). Returns the
        number of runs processed."""
        event(
            log,
            "worker.started",
            worker=self.worker_id,
            registry=mask_url(self.settings.database_url),
        )
        ran = poll(
            self.claim,
            self.process,
            self.stopping,
            poll_s=self.settings.worker_poll_s,
            until_idle=once,
            most=1 if once else None,
        )
        event(log, "worker.stopped", worker=self.worker_id, runs=ran)
        return ran


def main(settings: EvaluatorSettings, *, once: bool = False) -> int:
    """Run a worker in this process until SIGTERM/SIGINT (graceful: exit 0)."""
    worker = Worker(settings)
    stop_on_signals(
        worker.stopping, log, "giving the current run back at its next step, then exiting"
    )
    try:
        worker.serve(once=once)
    finally:
        worker.registry.dispose()
    return 0
