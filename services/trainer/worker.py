"""The job worker: claims queued jobs from the registry and runs their recipe.

Safe with several workers on one registry. Claims, heartbeats and every write of a job's holder go
through the fenced work queue of ``shared/registry/queue.py`` (the evaluator's too):

- **Claiming** is a compare-and-set that increments ``attempts``; of two workers racing for a job
  exactly one wins, and ``attempts`` is the claim's fencing token.
- **Heartbeats** refresh ``heartbeat_at`` every few seconds while the job runs. A job whose
  heartbeat is older than ``worker_stale_s`` is claimable by anyone: that is how a job survives
  ``kill -9`` of its worker. The new worker resumes from the job's newest complete checkpoint, and
  every write of the old one (fenced by worker id *and* attempt) matches nothing.
- **Finishing** registers the adapter version and marks the job succeeded in one transaction, under
  the same fence, so a job yields exactly one version even if two workers ever ran it.
- **Cancel** is a flag the training loop checks after every step; nothing is saved or registered
  afterwards and the job's scratch folder is removed.

Run it as ``python -m services.trainer.worker`` or ``loraplex train worker``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from typing import Any

from sqlalchemy.orm import Session

from services.trainer.config import TrainerSettings
from services.trainer.job_context import job_context, registrar
from services.trainer.job_reporter import CLAIM_LOST as CLAIM_LOST  # re-exported: its old home
from services.trainer.job_reporter import WORKER_STOPPING, JobReporter
from services.trainer.jobs import add_event, job_dir
from services.trainer.k8s_jobs import KubernetesJobSettings
from services.trainer.k8s_runner import KubernetesJobRunner
from services.trainer.launch import FINISHED_GRACE_S, RankGroup
from services.trainer.methods import get_method
from services.trainer.recipes.context import RecipeResult, Stopped
from services.trainer.statuses import ACTIVE, WAITING, JobStatus
from shared.errors import LoraplexError
from shared.logs import configure as configure_logging
from shared.logs import event, mask_url
from shared.registry import queue
from shared.registry.db import Registry, open_registry
from shared.registry.models import TrainingJobRow, utcnow
from shared.settings import load_settings
from shared.workers import heartbeating, log_claimed, new_worker_id, poll, stop_on_signals

log = logging.getLogger("loraplex.trainer.worker")


class Worker:
    def __init__(self, settings: TrainerSettings, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.registry: Registry = open_registry(settings)
        self.stopping = threading.Event()
        self.claims: dict[str, queue.Claim] = {}  # job id -> this worker's claim (fencing token)
        # True in rank 0 of a multi-process job (launch.py): it trains, never starts ranks itself.
        self.in_rank = False
        # With LORAPLEX_K8S_ENABLED each job trains in its own Kubernetes Job (k8s_jobs.py).
        self.kubernetes: KubernetesJobRunner | None = None
        k8s = KubernetesJobSettings()
        if k8s.enabled:
            self.kubernetes = KubernetesJobRunner.in_cluster(k8s, data_dir=str(settings.data_dir))

    # -- registry operations (fenced: shared/registry/queue.py) ------------------------------------
    def guarded_update(self, session: Session, job_id: str, **values: Any) -> bool:
        """Update the job only while this worker's claim holds it and it is unfinished."""
        claim = self.claims.get(job_id)
        if claim is None:
            return False
        return queue.guarded_update(session, TrainingJobRow, claim, statuses=ACTIVE, **values)

    def claim(self, only: str | None = None) -> str | None:
        """Claim the oldest claimable job (waiting, or its holder's heartbeat stopped); None when
        there is none. The job keeps its status: the recipe moves it on once its data is valid."""
        with self.registry.session() as session:
            claim = queue.claim_next(
                session,
                TrainingJobRow,
                self.worker_id,
                stale_after_s=self.settings.worker_stale_s,
                waiting=WAITING,
                running=ACTIVE,
                set_status=None,
                only=only,
                extra={"started_at": utcnow()},
            )
            if claim is None:
                return None
            previous = claim.took_over_from
            note = f" (taking over from {previous}, whose heartbeat stopped)" if previous else ""
            add_event(
                session,
                claim.row_id,
                f"worker {self.worker_id} claimed the job, attempt {claim.attempt}{note}",
                data={"worker_id": self.worker_id, "attempt": claim.attempt},
            )
        self.claims[claim.row_id] = claim
        log_claimed(log, "job.claimed", claim, key="job")
        return claim.row_id

    def hold(self, job: TrainingJobRow, attempt: int | None = None) -> None:
        """Act under the claim this worker's id already holds on ``job`` (``run-job`` in the
        Kubernetes Job of the worker that claimed it, rank 0 of its multi-process training):
        same id, same attempt (``attempt``: the claimer's, when it is known), same fence."""
        held = job.attempts if attempt is None else attempt
        self.claims[job.id] = queue.Claim(job.id, self.worker_id, held, status=job.status)

    def _beat(self, session: Session, job_id: str) -> bool:
        claim = self.claims.get(job_id)
        return claim is not None and queue.heartbeat(
            session, TrainingJobRow, claim, statuses=ACTIVE
        )

    def _finish(self, job_id: str, status: str, message: str, **values: Any) -> None:
        with self.registry.session() as session:
            updated = self.guarded_update(
                session, job_id, status=status, finished_at=utcnow(), **values
            )
            if updated:
                level = "error" if status == JobStatus.FAILED else "info"
                add_event(session, job_id, message, level=level, data=values.get("error"))
        if not updated:
            return  # not ours any more: its new holder says what happened
        error = values.get("error") or {}
        event(
            log,
            f"job.{status}",
            logging.ERROR if status == JobStatus.FAILED else logging.INFO,
            job=job_id,
            error=error.get("message"),
            code=error.get("code"),
        )

    def _release(self, job_id: str) -> None:
        """Give the job back (worker shutting down): the next worker resumes from its checkpoint."""
        claim = self.claims.get(job_id)
        with self.registry.session() as session:
            if claim is not None and queue.release(
                session, TrainingJobRow, claim, status=JobStatus.QUEUED, statuses=ACTIVE
            ):
                add_event(session, job_id, "worker stopped; job queued again to resume")
        event(log, "job.released", job=job_id, worker=self.worker_id)

    # -- running a job -------------------------------------------------------------------------------
    def process(self, job_id: str) -> None:
        """Run a job this worker has claimed, to its end or until it is stopped."""
        if job_id not in self.claims:
            raise queue.ClaimLost(f"worker {self.worker_id} has not claimed job {job_id}")
        try:
            self._process(job_id)
        finally:
            self.claims.pop(job_id, None)

    def _process(self, job_id: str) -> None:
        with self.registry.session() as session:
            job = session.get(TrainingJobRow, job_id)
            assert job is not None
            session.expunge(job)
        reporter = JobReporter(self, job_id)
        if job.attempts > self.settings.max_attempts:
            self._finish(
                job_id,
                JobStatus.FAILED,
                "job failed: its worker stopped too often",
                error={
                    "code": "too_many_attempts",
                    "message": f"the job was interrupted {job.attempts - 1} times; giving up",
                    "type": "system_error",
                },
            )
            return
        out = job_dir(self.settings, job_id)
        started = time.monotonic()
        beat = functools.partial(self._beat, job_id=job_id)
        every_s = self.settings.worker_heartbeat_s
        with heartbeating(self.registry, beat, every_s, reporter.lost, label=job_id, log=log):
            try:
                processes = int((job.config or {}).get("processes") or 1)
                if self.kubernetes is not None:
                    self._process_in_kubernetes(job_id, processes)
                    return
                if processes > 1 and not self.in_rank:
                    self._process_in_ranks(job, reporter, processes)
                    return
                ctx = job_context(
                    self.settings,
                    self.registry,
                    job,
                    reporter,
                    registrar(self.settings, job_id, job.adapter_name, self.guarded_update),
                )
                recipe = get_method(ctx.spec.method.type).load_recipe()
                result: RecipeResult = recipe(ctx)
                event(
                    log,
                    "job.succeeded",
                    job=job_id,
                    version=result.version_id,
                    seconds=round(time.monotonic() - started, 1),
                    **reporter.last_metrics,
                )
                shutil.rmtree(out, ignore_errors=True)
            except Stopped as stop:
                if stop.reason == JobStatus.CANCELLED:
                    shutil.rmtree(out, ignore_errors=True)
                    self._finish(job_id, JobStatus.CANCELLED, "job cancelled; nothing was saved")
                elif stop.reason == WORKER_STOPPING:
                    self._release(job_id)
                else:
                    event(log, "job.abandoned", logging.WARNING, job=job_id, reason=stop.reason)
            except LoraplexError as exc:
                error = {
                    **exc.to_dict(),
                    "type": "user_error" if exc.user_error else "system_error",
                }
                self._finish(job_id, JobStatus.FAILED, f"job failed: {exc.message}", error=error)
                if exc.user_error:
                    shutil.rmtree(out, ignore_errors=True)
            except Exception as exc:
                log.exception("job %s failed", job_id)
                error = {
                    "code": "internal_error",
                    "message": f"training failed: {type(exc).__name__}: {exc}",
                    "type": "system_error",
                }
                self._finish(
                    job_id, JobStatus.FAILED, f"job failed: {error['message']}", error=error
                )

    def _process_in_ranks(self, job: TrainingJobRow, reporter: JobReporter, n: int) -> None:
        """Train under torchrun (launch.py): rank 0 acts as this worker; follow the group here
        (and keep heartbeating); kill it on cancel, shutdown or a lost claim; fail the job with
        the failing rank's error if the group ended without finishing it."""
        out = job_dir(self.settings, job.id)
        claim = self.claims[job.id]
        group = RankGroup.start(
            self.settings, job.id, n, worker_id=self.worker_id, attempt=claim.attempt, scratch=out
        )
        event(log, "job.ranks_started", job=job.id, processes=n, pid=group.process.pid)
        with self.registry.session() as session:
            add_event(session, job.id, f"training in {n} processes (torchrun, DDP)")
        reason = None
        while (code := group.poll()) is None:
            time.sleep(min(1.0, self.settings.worker_heartbeat_s))
            reason = reporter.should_stop()
            if reason and self._ended(job.id):
                # Rank 0 finished the job (which ends the claim): the group is exiting.
                # torchrun takes a while to wind down after its ranks exit (over 10 s measured
                # on a loaded 2-core machine); the job is done, so waiting costs nothing.
                reason, code = None, group.wait(FINISHED_GRACE_S)
                break
            if reason:
                group.kill()
                break
        if reason == JobStatus.CANCELLED:
            shutil.rmtree(out, ignore_errors=True)
            self._finish(job.id, JobStatus.CANCELLED, "job cancelled; nothing was saved")
            return
        if reason == WORKER_STOPPING:
            self._release(job.id)
            return
        if reason is not None:
            event(log, "job.abandoned", logging.WARNING, job=job.id, reason=reason)
            return
        errors = group.rank_errors()
        first = errors[0] if errors else {"rank": None, "error": f"torchrun exited with {code}"}
        rank = "a rank" if first["rank"] is None else f"rank {first['rank']}"
        # Rank 0 finished the job itself (succeeded, or failed with its own error) unless the
        # group died around it; then the job still looks active and is failed here.
        self._finish(
            job.id,
            JobStatus.FAILED,
            f"job failed: {rank}: {first['error']}",
            error={
                "code": "rank_failed",
                "message": f"training failed in {rank} of {n}: {first['error']}",
                "type": "system_error",
                "details": [f"rank {e['rank']}: {e['error']}" for e in errors[:8]],
            },
        )
        if code == 0:
            shutil.rmtree(out, ignore_errors=True)

    def _ended(self, job_id: str) -> bool:
        with self.registry.session() as session:
            job = session.get(TrainingJobRow, job_id)
            return job is None or job.status not in ACTIVE

    def _process_in_kubernetes(self, job_id: str, processes: int = 1) -> None:
        """Train in a Kubernetes Job whose ``run-job`` acts as this worker; follow it here (and
        keep heartbeating), then fail the job if the pod ended without finishing it."""
        assert self.kubernetes is not None
        runner = self.kubernetes
        name = runner.submit(job_id, worker_id=self.worker_id, processes=processes)
        with self.registry.session() as session:
            add_event(session, job_id, f"training in Kubernetes Job {name}")
        state = runner.follow(name)
        with self.registry.session() as session:
            job = session.get(TrainingJobRow, job_id)
            unfinished = job is not None and job.status in ACTIVE
        if unfinished:
            reasons = runner.diagnose(name)
            self._finish(
                job_id,
                JobStatus.FAILED,
                f"Kubernetes Job {name} ended ({state.phase}) without finishing the job",
                error={
                    "code": "kubernetes_job_failed",
                    "message": f"Kubernetes Job {name}: {state.reason or state.phase} "
                    f"{state.message}".strip(),
                    "type": "system_error",
                    "details": reasons[:20],
                },
            )

    def run(self, *, once: bool = False, max_jobs: int | None = None) -> int:
        """Claim and run jobs until stopped (or until idle, with ``once``). Returns jobs run."""
        return poll(
            self.claim,
            self.process,
            self.stopping,
            poll_s=self.settings.worker_poll_s,
            until_idle=once,
            most=max_jobs,
        )


def run_one(job_id: str) -> int:
    """Run one job: as the worker named by LORAPLEX_WORKER_ID if it holds it, else by claiming it."""
    settings = load_settings(TrainerSettings)
    configure_logging("trainer-job", settings.log_level)
    worker = Worker(settings, worker_id=os.environ.get("LORAPLEX_WORKER_ID") or None)
    worker.kubernetes = None  # this process is where the job trains
    try:
        with worker.registry.session() as session:
            job = session.get(TrainingJobRow, job_id)
            holder = job.worker_id if job is not None else None
        if job is None:
            log.error("job %s does not exist", job_id)
            return 2
        if holder == worker.worker_id:
            worker.hold(job)
        elif worker.claim(only=job_id) is None:
            log.error("job %s is held by %s or already finished", job_id, holder)
            return 1
        worker.process(job_id)
        with worker.registry.session() as session:
            final = session.get(TrainingJobRow, job_id)
            return 0 if final is not None and final.status == JobStatus.SUCCEEDED else 1
    finally:
        worker.registry.dispose()


def main(once: bool = False, max_jobs: int | None = None) -> int:
    settings = load_settings(TrainerSettings)
    configure_logging("trainer-worker", settings.log_level)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    worker = Worker(settings)
    stop_on_signals(worker.stopping, log, "finishing the current step, then releasing the job")
    event(log, "worker.started", worker=worker.worker_id, registry=mask_url(settings.database_url))
    started = time.monotonic()
    ran = worker.run(once=once, max_jobs=max_jobs)
    event(
        log,
        "worker.stopped",
        worker=worker.worker_id,
        jobs=ran,
        seconds=round(time.monotonic() - started),
    )
    worker.registry.dispose()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(once="--once" in sys.argv))
