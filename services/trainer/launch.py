"""Multi-process training: a job with ``processes: N`` trains under ``torchrun`` (DDP).

The worker that claimed the job starts ``torchrun --standalone --nproc-per-node N -m
services.trainer.launch <job id>`` as a child in its own process group (:class:`RankGroup`), keeps
heartbeating, and watches the group and the job:

* **Rank 0** acts as the claiming worker (same worker id and attempt, so every write is fenced
  like the worker's own): it writes the job's events and checkpoints, saves the adapter, writes
  the manifest and registers the version, exactly as a one-process job does.
* **Other ranks** read the job (spec, data files, base model) and train their share of each batch;
  they never write to the registry. Their events are dropped (rank 0 reports the same steps) and
  they stop when rank 0's reporter says so (``recipes/callbacks.py`` broadcasts the decision, so
  all ranks leave at the same step). A rank's unexpected error is written to ``<scratch>/ranks/``
  for the worker, which fails the job with it.
* **Cancel** (or the worker stopping, or a lost claim) kills the whole group.

Each rank logs as ``trainer-rank<N>``, so log lines name the rank.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.trainer.config import TrainerSettings
from services.trainer.schemas import JobSpec

log = logging.getLogger("loraplex.trainer.launch")

SETTINGS_ENV = "LORAPLEX_RANK_SETTINGS"  # the worker's settings, as JSON, for every rank
ERRORS_ENV = "LORAPLEX_RANK_ERRORS"  # folder where a failing rank leaves its error
WORKER_ENV = "LORAPLEX_WORKER_ID"
ATTEMPT_ENV = "LORAPLEX_ATTEMPT"
RUN_WORK_ENV = "LORAPLEX_RUN_WORK"  # ``loraplex train run --nproc``: the ranks' shared folder
STOP_GRACE_S = 10.0
FINISHED_GRACE_S = 120.0  # for torchrun to exit by itself once rank 0 finished the job


def torchrun(processes: int, module: str, *args: str, python: str | None = None) -> list[str]:
    """``torchrun`` (as ``python -m torch.distributed.run``: the same interpreter as the worker,
    whatever PATH says) running ``python -m module args`` once per process on this machine."""
    interpreter = python or sys.executable
    run = [interpreter, "-m", "torch.distributed.run", "--standalone"]
    return [*run, f"--nproc-per-node={processes}", "-m", module, *args]


def rank_command(job_id: str, processes: int, *, python: str | None = None) -> list[str]:
    """The ranks of registry job ``job_id``."""
    return torchrun(processes, "services.trainer.launch", job_id, python=python)


def rank_environment(
    settings: TrainerSettings, *, worker_id: str, attempt: int, errors: Path
) -> dict[str, str]:
    """The ranks' environment: the worker's settings (they may not come from the environment, as
    in tests) and one compute thread per rank, since N ranks on N cores each want one core."""
    values = json.loads(settings.model_dump_json())
    values["torch_threads"] = 1
    return {
        **os.environ,
        SETTINGS_ENV: json.dumps(values),
        ERRORS_ENV: str(errors),
        WORKER_ENV: worker_id,
        ATTEMPT_ENV: str(attempt),
        "OMP_NUM_THREADS": "1",
    }


@dataclass
class RankGroup:
    """The ``torchrun`` child of a worker and the ranks it starts, all in one process group."""

    process: subprocess.Popen[bytes]
    errors: Path

    @classmethod
    def start(
        cls,
        settings: TrainerSettings,
        job_id: str,
        processes: int,
        *,
        worker_id: str,
        attempt: int,
        scratch: Path,
    ) -> RankGroup:
        errors = scratch / "ranks"
        errors.mkdir(parents=True, exist_ok=True)
        for old in errors.glob("rank-*.json"):
            old.unlink()  # left by an earlier attempt
        env = rank_environment(settings, worker_id=worker_id, attempt=attempt, errors=errors)
        process = subprocess.Popen(
            rank_command(job_id, processes),
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,  # its own process group: cancel kills every rank at once
        )
        return cls(process, errors)

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout_s: float) -> int:
        """Its exit code once it exits by itself, else (after ``timeout_s``) once killed."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGTERM to the whole group (torchrun and every rank), SIGKILL after a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(STOP_GRACE_S)
                break
            except subprocess.TimeoutExpired:
                continue
        # torchrun may exit before its ranks do; none of them may outlive the job.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def rank_errors(self) -> list[dict[str, Any]]:
        """What failing ranks reported, lowest rank first."""
        found = []
        for path in sorted(self.errors.glob("rank-*.json")):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text()))
        return sorted(found, key=lambda e: int(e.get("rank", 0)))


def run_ranks(spec: JobSpec, adapter_name: str) -> int:
    """``loraplex train run --nproc N``: the same ``run`` as ranks of ``torchrun``, from ``spec``
    (its data files already registered, by id), sharing one scratch folder; rank 0 prints the
    result. Returns torchrun's exit code."""
    work = Path(tempfile.mkdtemp(prefix="loraplex-run-"))
    try:
        config = work / "job.json"
        config.write_text(spec.model_dump_json(exclude_none=True))
        cli = ["run", str(config), "--adapter-name", adapter_name]
        command = torchrun(spec.processes, "services.trainer.cli", *cli)
        env = {**os.environ, RUN_WORK_ENV: str(work), "OMP_NUM_THREADS": "1"}
        env["LORAPLEX_TORCH_THREADS"] = "1"
        return subprocess.run(command, env=env, check=False).returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


class RankReporter:
    """The reporter of a rank other than 0: rank 0 reports the job; stop decisions come from it."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def event(
        self, message: str, *, level: str = "info", type: Any = None, data: Any = None
    ) -> None:
        if level == "error":
            log.error("rank %d: %s", self.rank, message)

    def should_stop(self) -> str | None:
        return None

    def phase(self, status: str) -> None:
        return None


def _refuse_register(*_: Any) -> str:
    raise RuntimeError("only rank 0 registers the adapter")


def _record_error(rank: int, exc: BaseException) -> None:
    folder = os.environ.get(ERRORS_ENV)
    if folder:
        error = {"rank": rank, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        (Path(folder) / f"rank-{rank}.json").write_text(json.dumps(error))


def _run_rank0(settings: TrainerSettings, job_id: str) -> int:
    from services.trainer.statuses import JobStatus
    from services.trainer.worker import Worker
    from shared.registry.models import TrainingJobRow

    worker = Worker(settings, worker_id=os.environ[WORKER_ENV])
    worker.kubernetes = None
    worker.in_rank = True  # train here; never start another group
    try:
        with worker.registry.session() as session:
            job = session.get(TrainingJobRow, job_id)
            if job is None:
                raise LookupError(f"job {job_id} does not exist")
            session.expunge(job)
        worker.hold(job, attempt=int(os.environ[ATTEMPT_ENV]))
        worker.process(job_id)  # fails the job itself with rank 0's error
        with worker.registry.session() as session:
            final = session.get(TrainingJobRow, job_id)
            return 0 if final is not None and final.status == JobStatus.SUCCEEDED else 1
    finally:
        worker.registry.dispose()


def _run_other_rank(settings: TrainerSettings, job_id: str, rank: int) -> int:
    from services.trainer.job_context import job_context
    from services.trainer.methods import get_method
    from services.trainer.recipes.context import Stopped
    from services.trainer.recipes.training import RankDone
    from shared.registry.db import open_registry
    from shared.registry.models import TrainingJobRow

    registry = open_registry(settings)
    try:
        with registry.session() as session:
            job = session.get(TrainingJobRow, job_id)
            if job is None:
                raise LookupError(f"job {job_id} does not exist")
            session.expunge(job)
        ctx = job_context(settings, registry, job, RankReporter(rank), _refuse_register)
    finally:
        registry.dispose()
    try:
        get_method(ctx.spec.method.type).load_recipe()(ctx)
    except (RankDone, Stopped):
        return 0
    raise RuntimeError(f"rank {rank} finished its recipe without training")


def main(argv: list[str] | None = None) -> int:
    """One rank (started by ``torchrun``, which sets RANK and WORLD_SIZE)."""
    from shared.logs import configure as configure_logging

    args = sys.argv[1:] if argv is None else argv
    job_id = args[0]
    rank = int(os.environ.get("RANK", "0"))
    settings = TrainerSettings(**json.loads(os.environ[SETTINGS_ENV]))
    configure_logging(f"trainer-rank{rank}", settings.log_level)
    started = time.monotonic()
    try:
        code = (
            _run_rank0(settings, job_id) if rank == 0 else _run_other_rank(settings, job_id, rank)
        )
    except BaseException as exc:
        log.exception("rank %d of job %s failed", rank, job_id)
        _record_error(rank, exc)
        return 1
    log.info(
        "rank %d of job %s done in %.1f s (exit %d)", rank, job_id, time.monotonic() - started, code
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
