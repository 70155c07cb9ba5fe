"""A running job's link to the registry: its events (and their log lines) go there, and stop
requests (cancel, a lost claim, the worker shutting down) come from there."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from services.trainer.files import record_near_duplicates
from services.trainer.jobs import add_event
from services.trainer.recipes.context import EventKind
from services.trainer.statuses import JobStatus
from shared.logs import event
from shared.registry.models import TrainingJobRow

if TYPE_CHECKING:
    from services.trainer.worker import Worker

log = logging.getLogger("loraplex.trainer.worker")

# Event rows keep the types they always had: "training started" is a plain message row.
STORED_TYPE = {EventKind.STARTED: EventKind.MESSAGE}

CLAIM_LOST = "claim lost"
WORKER_STOPPING = "worker stopping"


class JobReporter:
    """Events to the registry; stop requests from it (cancel, lost claim, shutdown)."""

    def __init__(self, worker: Worker, job_id: str) -> None:
        self.worker = worker
        self.job_id = job_id
        self.lost = threading.Event()
        self.last_metrics: dict[str, Any] = {}  # the latest loss and tokens/s, for job.* lines

    def event(
        self,
        message: str,
        *,
        level: str = "info",
        type: EventKind = EventKind.MESSAGE,
        data: Any = None,
    ) -> None:
        kind = EventKind(type)
        stored = STORED_TYPE.get(kind, kind).value
        with self.worker.registry.session() as session:
            add_event(session, self.job_id, message, level=level, type=stored, data=data)
            if kind == EventKind.VALIDATION and isinstance(data, dict):
                self._file_near_duplicates(session, data)
        self._log(message, kind, data if isinstance(data, dict) else {})

    def _file_near_duplicates(self, session: Session, report: dict[str, Any]) -> None:
        """The data validation is where near-duplicates are computed (bounded, off the API; see
        ``services.trainer.files``): its count goes into the training file's report too."""
        job = session.get(TrainingJobRow, self.job_id)
        found = report.get("near_duplicates")
        if job is not None and isinstance(found, dict):
            record_near_duplicates(session, job.training_file, found)

    def _log(self, message: str, kind: EventKind, data: dict[str, Any]) -> None:
        job = self.job_id
        if kind == EventKind.METRICS and "train_loss" in data:
            self.last_metrics.update(
                train_loss=data.get("train_loss"), tokens_per_s=data.get("tokens_per_second")
            )
            event(
                log,
                "job.progress",
                job=job,
                step=data.get("step"),
                total_steps=data.get("total_steps"),
                train_loss=data.get("train_loss"),
                tokens_per_s=data.get("tokens_per_second"),
            )
        elif kind == EventKind.METRICS and "valid_loss" in data:
            self.last_metrics["valid_loss"] = data.get("valid_loss")
        elif kind == EventKind.CHECKPOINT:
            metrics = data.get("metrics") or {}
            event(
                log,
                "job.checkpoint",
                job=job,
                step=data.get("step"),
                train_loss=metrics.get("train_loss"),
                valid_loss=metrics.get("valid_loss"),
            )
        elif kind == EventKind.STARTED:
            event(log, "job.started", job=job, step=data.get("step"), total=data.get("total_steps"))
        elif kind == EventKind.VALIDATION:
            event(log, "job.data_validated", job=job, detail=message)

    def should_stop(self) -> str | None:
        if self.lost.is_set():
            return CLAIM_LOST
        if self.worker.stopping.is_set():
            return WORKER_STOPPING
        with self.worker.registry.session() as session:
            job = session.get(TrainingJobRow, self.job_id)
            claim = self.worker.claims.get(self.job_id)
            if (
                job is None
                or job.worker_id != self.worker.worker_id
                or (claim is not None and job.attempts != claim.attempt)
            ):
                self.lost.set()
                return CLAIM_LOST
            return JobStatus.CANCELLED if job.cancel_requested else None

    def phase(self, status: str) -> None:
        with self.worker.registry.session() as session:
            if self.worker.guarded_update(session, self.job_id, status=status):
                add_event(session, self.job_id, f"job status: {status}")
