"""Trainer settings (env prefix ``LORAPLEX_``), validated at start-up."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field, model_validator

from shared.settings import SharedSettings

log = logging.getLogger("loraplex.trainer.config")

# Durations were spelled *_seconds here and *_s everywhere else; the old names still work.
DEPRECATED_DURATIONS = {
    "worker_poll_seconds": "worker_poll_s",
    "heartbeat_seconds": "worker_heartbeat_s",
    "stale_after_seconds": "worker_stale_s",
}


class TrainerSettings(SharedSettings):
    """Settings of the trainer API, its workers and ``loraplex train run``."""

    # Prefixed names: LORAPLEX_PORT would be ambiguous between services sharing one environment.
    trainer_host: str = Field(default="127.0.0.1", description="Address the trainer API binds to.")
    trainer_port: int = Field(default=8001, ge=1, le=65535, description="Port of the trainer API.")
    max_upload_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="Largest data file accepted by POST /v1/files."
    )
    max_lora_rank: int = Field(
        default=16, ge=1, description="Highest LoRA rank the server loads (vLLM --max-lora-rank)."
    )
    # The names the evaluator's worker uses for the same queue timing (shared/registry/queue.py).
    worker_poll_s: float = Field(default=2.0, gt=0, description="Idle wait between claims.")
    worker_heartbeat_s: float = Field(default=5.0, gt=0, description="Worker heartbeat period.")
    worker_stale_s: float = Field(
        default=60.0, gt=0, description="A running job whose heartbeat is older is taken over."
    )
    worker_poll_seconds: float | None = Field(
        default=None, gt=0, description="Deprecated: LORAPLEX_WORKER_POLL_S."
    )
    heartbeat_seconds: float | None = Field(
        default=None, gt=0, description="Deprecated: LORAPLEX_WORKER_HEARTBEAT_S."
    )
    stale_after_seconds: float | None = Field(
        default=None, gt=0, description="Deprecated: LORAPLEX_WORKER_STALE_S."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Claims of one job before it fails as a system error."
    )
    memory_limit_bytes: int | None = Field(
        default=None, description="Memory the planner may use; empty: what the machine has free."
    )
    torch_threads: int | None = Field(
        default=None, description="CPU threads for training; empty: torch's default."
    )

    trainer_url: str = Field(
        default="", description="Trainer API base URL for the CLI; empty: http://host:port."
    )
    # The only place a tracking server is chosen: a job names an experiment, never a server.
    mlflow_tracking_uri: str = Field(
        default="",
        description="MLflow tracking server (http(s)://...) or store URI for jobs with an mlflow "
        "integration; credentials via MLflow's own MLFLOW_TRACKING_* variables; empty: a local "
        "store under <data dir>/tracking/mlflow.",
    )

    @model_validator(mode="after")
    def _map_deprecated_durations(self) -> TrainerSettings:
        for old, new in DEPRECATED_DURATIONS.items():
            value = getattr(self, old)
            if value is None:
                continue
            old_env, new_env = f"LORAPLEX_{old.upper()}", f"LORAPLEX_{new.upper()}"
            if new in self.model_fields_set:
                log.warning("%s is deprecated and ignored: %s is set too", old_env, new_env)
                continue
            log.warning(
                "%s is deprecated; use %s (read as %s=%s)", old_env, new_env, new_env, value
            )
            setattr(self, new, value)
        return self

    @property
    def api_url(self) -> str:
        return (self.trainer_url or f"http://{self.trainer_host}:{self.trainer_port}").rstrip("/")

    @property
    def work_dir(self) -> Path:
        """Per-job scratch folders (checkpoints); must be shared by workers that take over jobs."""
        return self.data_dir / "trainer" / "jobs"

    @property
    def tracking_dir(self) -> Path:
        """Experiment-tracking output kept after a job: ``tensorboard/<run>``, ``wandb/<run>``
        (offline runs) and ``mlflow/`` (the local MLflow store)."""
        return self.data_dir / "tracking"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "trainer" / "uploads"
