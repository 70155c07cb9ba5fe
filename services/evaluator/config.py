"""Evaluator settings (env prefix ``LORAPLEX_``), on top of the shared ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import SharedSettings


class EvaluatorSettings(SharedSettings):
    # Prefixed names: LORAPLEX_PORT would be ambiguous between the services sharing one environment.
    evaluator_host: str = Field(default="127.0.0.1", description="API bind address")
    evaluator_port: int = Field(default=8002, ge=1, le=65535, description="API port")
    server_url: str = Field(
        default="",
        description="Our OpenAI-compatible server (e.g. http://127.0.0.1:8000). Used for "
        "generation with concurrency and as the default judge; empty: generate in-process.",
    )
    server_api_key: str = Field(default="", description="Bearer token for server_url, if any")
    judge_url: str = Field(default="", description="Judge endpoint; empty: server_url")
    judge_model: str = Field(default="", description="Judge model name; empty: the base model")
    judge_api_key: str = Field(default="", description="Bearer token for the judge endpoint")
    eval_threads: int = Field(default=0, ge=0, description="torch threads; 0: torch's default")
    worker_poll_s: float = Field(default=2.0, gt=0, description="worker queue poll interval")
    worker_heartbeat_s: float = Field(default=10.0, gt=0, description="heartbeat interval")
    worker_stale_s: float = Field(
        default=120.0, gt=0, description="a running run without heartbeat this long is requeued"
    )

    @property
    def evaluations_dir(self) -> Path:
        return self.data_dir / "evaluations"

    @property
    def eval_cache_dir(self) -> Path:
        return self.data_dir / "cache" / "evaluator"
