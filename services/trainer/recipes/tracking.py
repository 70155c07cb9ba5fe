"""Experiment tracking: the job's ``integrations`` as trainer callbacks.

Each tracker is given where to write explicitly, never through a process-wide environment variable
or a library's global "active run" (one worker runs many jobs, one after the other), and its
output outlives the job's scratch directory. A run is named by the job id (``loraplex train run``:
the adapter name and the time).

- TensorBoard: transformers' own ``TensorBoardCallback`` with its writer, event files in
  ``<data dir>/tracking/tensorboard/<run>``; a resumed job appends a new event file there.
- MLflow: an ``MlflowClient`` on ``LORAPLEX_MLFLOW_TRACKING_URI``, else a local SQLite store
  ``<data dir>/tracking/mlflow/mlflow.db`` (MLflow 3.18 refuses its old file store). The run is
  tagged with the job id; a resumed job continues the same run.
- W&B: ``wandb.init(mode="offline")`` under ``<data dir>/tracking/wandb/<run>``, whatever the
  environment says; ``wandb sync`` uploads the run folder later, from wherever the operator wants.

All three log what the trainer logs, under the same names (``train/loss``,
``train/learning_rate``, ``eval/loss``, ...) at each logging step.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Protocol

from services.trainer.config import TrainerSettings
from services.trainer.recipes.context import RecipeContext
from shared.logs import mask_url

log = logging.getLogger(__name__)

# Tags an MLflow run carries; ``RUN_TAG`` finds the run again when a job resumes.
JOB_TAG = "loraplex.job_id"
RUN_TAG = "loraplex.run"
# TrainingArguments that are places or secrets, not hyperparameters: never sent to a tracker.
_NOT_PARAMS = re.compile(r"dir|path|token|hub|url|report_to|logging_first", re.IGNORECASE)
_MLFLOW_KEY = re.compile(r"[^0-9A-Za-z_\-. :/]")
_MLFLOW_MAX_PARAM = 250  # MLflow's limit on a parameter value's length
_MLFLOW_BATCH = 100  # and on parameters per log_batch


def run_name(ctx: RecipeContext) -> str:
    return ctx.job_id or f"{ctx.adapter_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def tensorboard_dir(ctx: RecipeContext) -> Path:
    return ctx.settings.tracking_dir / "tensorboard" / run_name(ctx)


def wandb_dir(ctx: RecipeContext) -> Path:
    return ctx.settings.tracking_dir / "wandb" / run_name(ctx)


def mlflow_uri(settings: TrainerSettings) -> str:
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return f"sqlite:///{settings.tracking_dir / 'mlflow' / 'mlflow.db'}"


def run_params(ctx: RecipeContext, args: Any) -> dict[str, Any]:
    """The job's choices as tracker parameters: the trainer's scalar arguments (minus places and
    secrets) and what the job is (method, base, adapter, LoRA)."""
    params: dict[str, Any] = {
        k: v
        for k, v in args.to_dict().items()
        if isinstance(v, int | float | str | bool) and not _NOT_PARAMS.search(k)
    }
    lora = ctx.spec.lora
    params.update(
        {
            "loraplex.method": ctx.spec.method.type,
            "loraplex.base_model": ctx.spec.model,
            "loraplex.adapter": ctx.adapter_name,
            "lora.r": lora.r,
            "lora.alpha": lora.alpha,
            "lora.dropout": lora.dropout,
        }
    )
    return params


class Tracker(Protocol):
    """One tracker's run: ``start`` returns where it went (said in the job's events)."""

    label: str

    def start(self, params: dict[str, Any]) -> dict[str, Any]: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def end(self, status: str) -> None: ...


class MlflowTracker:
    label = "MLflow"

    def __init__(self, ctx: RecipeContext, experiment: str) -> None:
        self.uri = mlflow_uri(ctx.settings)
        self.local = not ctx.settings.mlflow_tracking_uri
        self.artifacts = ctx.settings.tracking_dir / "mlflow" / "artifacts"
        self.experiment = experiment
        self.name = run_name(ctx)
        self.job_id = ctx.job_id
        self.client: Any = None
        self.run_id = ""

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        location = self.artifacts.as_uri() if self.local else None
        try:
            return str(self.client.create_experiment(self.experiment, location))
        except MlflowException:  # another worker created it meanwhile
            return str(self.client.get_experiment_by_name(self.experiment).experiment_id)

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        if self.local:
            self.artifacts.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment_id = self._experiment_id()
        runs = self.client.search_runs(
            [experiment_id], f"tags.`{RUN_TAG}` = '{self.name}'", max_results=1
        )
        if runs:  # a resumed job: same run, its parameters are already there
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {RUN_TAG: self.name, **({JOB_TAG: self.job_id} if self.job_id else {})}
            run = self.client.create_run(experiment_id, run_name=self.name, tags=tags)
            self.run_id = run.info.run_id
            items = [
                Param(k, str(v)) for k, v in params.items() if len(str(v)) <= _MLFLOW_MAX_PARAM
            ]
            for i in range(0, len(items), _MLFLOW_BATCH):
                self.client.log_batch(self.run_id, params=items[i : i + _MLFLOW_BATCH])
        return {
            "run_id": self.run_id,
            "experiment_id": experiment_id,
            "tracking_uri": mask_url(self.uri),
            "resumed": bool(runs),
        }

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_MLFLOW_KEY.sub("_", k), v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbTracker:
    label = "W&B (offline)"

    def __init__(self, ctx: RecipeContext, options: Any) -> None:
        self.folder = wandb_dir(ctx)
        self.options = options
        self.name = run_name(ctx)
        self.job_id = ctx.job_id
        self.run: Any = None

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        import wandb

        self.folder.mkdir(parents=True, exist_ok=True)
        # Explicit arguments win over WANDB_* variables, so WANDB_MODE=online cannot send it.
        self.run = wandb.init(
            mode="offline",
            dir=str(self.folder),
            project=self.options.project,
            entity=self.options.entity,
            name=self.options.name or self.name,
            id=re.sub(r"[^A-Za-z0-9_-]", "-", self.name)[:64],
            tags=[*self.options.tags, *([self.job_id] if self.job_id else [])],
            config=params,
            reinit="create_new",
            settings=wandb.Settings(
                console="off",
                save_code=False,
                disable_git=True,
                disable_job_creation=True,
                x_disable_stats=True,
                x_disable_meta=True,
                silent=True,
            ),
        )
        return {"run_id": self.run.id, "folder": str(Path(self.run.dir).parent)}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def end(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def tracker_callback(ctx: RecipeContext, tracker: Tracker, key: str) -> Any:
    """A trainer callback that starts ``tracker`` with the job's parameters, logs each logging
    step under transformers' names, and ends the run (KILLED when the job was asked to stop,
    FAILED through :func:`fail` when training raised: transformers calls no callback then)."""
    from transformers import TrainerCallback
    from transformers.integrations.integration_utils import rewrite_logs

    class TrackerCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.started or not state.is_world_process_zero:
                return
            where = tracker.start(run_params(ctx, args))
            self.started = True
            ctx.reporter.event(f"{tracker.label} run: {where}", data={key: where})

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not self.started:
                return
            metrics = {
                k: float(v)
                for k, v in rewrite_logs(logs or {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            if metrics:
                tracker.log(metrics, state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.started:
                tracker.end("KILLED" if ctx.reporter.should_stop() else "FINISHED")
                self.started = False

        def on_failure(self) -> None:
            if self.started:
                self.started = False
                tracker.end("FAILED")

    return TrackerCallback()


def fail(callbacks: list[Any]) -> None:
    """End the started runs of ``callbacks`` as FAILED after training raised, so a tracker never
    shows a dead job as RUNNING; a tracker that cannot be told is logged, and the training error
    is what the caller raises."""
    for callback in callbacks:
        on_failure = getattr(callback, "on_failure", None)
        if on_failure is None:
            continue
        try:
            on_failure()
        except Exception:
            log.exception("could not mark the tracker run failed")


def callbacks(ctx: RecipeContext) -> list[Any]:
    """One trainer callback per tracker the job asked for (none by default)."""
    out: list[Any] = []
    seen: set[str] = set()
    for integration in ctx.spec.integrations or []:
        if integration.type in seen:  # the same tracker twice is one run
            continue
        seen.add(integration.type)
        if integration.type == "tensorboard":
            # A SummaryWriter writes its (empty) event file when made: rank 0's only.
            if int(os.environ.get("RANK", "0")) == 0:
                out.append(_tensorboard(ctx))
        elif integration.type == "mlflow":
            experiment = integration.mlflow.experiment_name if integration.mlflow else "loraplex"
            out.append(tracker_callback(ctx, MlflowTracker(ctx, experiment), "mlflow"))
        elif integration.type == "wandb":
            from services.trainer.integrations import WandbSettings

            options = integration.wandb or WandbSettings()
            out.append(tracker_callback(ctx, WandbTracker(ctx, options), "wandb"))
    return out


def _tensorboard(ctx: RecipeContext) -> Any:
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations.integration_utils import TensorBoardCallback

    log_dir = tensorboard_dir(ctx)
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx.reporter.event(
        f"TensorBoard event files go to {log_dir}", data={"tensorboard": str(log_dir)}
    )
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))
