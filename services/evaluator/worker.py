"""The evaluation worker: a job queue on the registry's ``evaluation_runs`` table.

A worker claims the oldest queued run with a compare-and-set UPDATE (``status='queued'`` in the
WHERE clause), so two workers never take the same run. While running it writes a heartbeat and
the progress every few seconds; a running run whose heartbeat is older than ``worker_stale_s`` is
put back in the queue (its worker died), at most ``MAX_ATTEMPTS`` times.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta

from sqlalchemy import select, update

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.runner import Tracker, stages
from services.evaluator.schemas import EvaluationCreate
from shared.logs import event, mask_url
from shared.registry.db import Registry, open_registry
from shared.registry.models import EvaluationRunRow, utcnow

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3


class Worker:
    def __init__(self, settings: EvaluatorSettings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry or open_registry(settings)
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}"
        self._progress = (0.0, "")
        self._stop = threading.Event()

    # -- queue ----------------------------------------------------------------------------------
    def requeue_stale(self) -> int:
        cutoff = utcnow() - timedelta(seconds=self.settings.worker_stale_s)
        moved = 0
        with self.registry.session() as session:
            stale = list(
                session.scalars(
                    select(EvaluationRunRow).where(
                        EvaluationRunRow.status == "running",
                        EvaluationRunRow.heartbeat_at.is_not(None),
                        EvaluationRunRow.heartbeat_at < cutoff,
                    )
                )
            )
            for row in stale:
                attempts = int((row.config or {}).get("attempts", 1))
                if attempts >= MAX_ATTEMPTS:
                    row.status = "failed"
                    row.error = {
                        "code": "worker_lost",
                        "type": "server_error",
                        "param": None,
                        "message": f"worker {row.worker_id} stopped responding "
                        f"{attempts} times; giving up",
                    }
                    row.finished_at = utcnow()
                else:
                    row.status = "queued"
                    event(
                        log,
                        "evaluation.requeued",
                        logging.WARNING,
                        run=row.id,
                        stale_worker=row.worker_id,
                        attempts=attempts,
                    )
                    row.worker_id = None
                    moved += 1
        return moved

    def claim(self) -> str | None:
        with self.registry.session() as session:
            candidates = list(
                session.scalars(
                    select(EvaluationRunRow.id)
                    .where(EvaluationRunRow.status == "queued")
                    .order_by(EvaluationRunRow.created_at)
                    .limit(5)
                )
            )
        for run_id in candidates:
            with self.registry.session() as session:
                result = session.execute(
                    update(EvaluationRunRow)
                    .where(EvaluationRunRow.id == run_id, EvaluationRunRow.status == "queued")
                    .values(status="running", worker_id=self.worker_id, heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    row = session.get(EvaluationRunRow, run_id)
                    attempt = 1
                    if row is not None:
                        cfg = dict(row.config or {})
                        attempt = cfg["attempts"] = int(cfg.get("attempts", 0)) + 1
                        row.config = cfg
                    event(
                        log,
                        "evaluation.claimed",
                        run=run_id,
                        worker=self.worker_id,
                        attempt=attempt,
                    )
                    return run_id
        return None

    # -- running --------------------------------------------------------------------------------
    def _heartbeat(self, run_id: str) -> None:
        while not self._stop.wait(self.settings.worker_heartbeat_s):
            fraction, stage = self._progress
            try:
                with self.registry.session() as session:
                    row = session.get(EvaluationRunRow, run_id)
                    if row is None or row.status != "running":
                        return
                    row.heartbeat_at = utcnow()
                    row.progress = fraction
                    row.config = {**(row.config or {}), "stage": stage}
            except Exception:
                log.exception("heartbeat for %s failed", run_id)

    def process(self, run_id: str) -> None:
        row = service.get_run(self.registry, run_id)
        request = EvaluationCreate.model_validate((row.config or {}).get("request", {}))
        self._stop.clear()
        beat = threading.Thread(target=self._heartbeat, args=(run_id,), daemon=True)
        beat.start()
        try:
            prepared = service.prepare(self.settings, self.registry, request, run_id)
            tracker = Tracker(
                stages(prepared.plan),
                lambda f, s: setattr(self, "_progress", (f, s)),
                run_id=run_id,
            )
            service.execute(self.settings, self.registry, prepared, tracker)
        except Exception as exc:
            event(log, "evaluation.failed", logging.WARNING, run=run_id, error=str(exc)[:500])
            if service.get_run(self.registry, run_id).status != "failed":
                service.fail_run(self.registry, run_id, exc)
        finally:
            self._stop.set()
            beat.join(timeout=5)

    def serve(self, *, once: bool = False) -> None:
        event(
            log,
            "worker.started",
            worker=self.worker_id,
            registry=mask_url(self.settings.database_url),
        )
        while True:
            self.requeue_stale()
            run_id = self.claim()
            if run_id is not None:
                self.process(run_id)
                if once:
                    return
            elif once:
                return
            else:
                time.sleep(self.settings.worker_poll_s)
