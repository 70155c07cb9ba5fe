"""Evaluator settings (env prefix ``LORAPLEX_``), on top of the shared ones."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.settings import SharedSettings

ENDPOINT_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# The checkout's examples/ (absent in a slim install), where the example release configs' data is.
REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Endpoint(BaseModel):
    """An OpenAI-compatible endpoint the evaluator may call, with the key it sends there.

    Requests name endpoints; they never carry a URL or a key, so a key goes only where the
    operator configured it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="base URL, e.g. http://loraplex-server:8000")
    api_key: str = Field(default="", repr=False, description="Bearer token sent to url only")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"endpoint url {value!r} must start with http:// or https://")
        return value.rstrip("/")


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
    endpoints: dict[str, Endpoint] = Field(
        default_factory=dict,
        description="Endpoints requests and suites may name (JSON: {name: {url, api_key}}). "
        "LORAPLEX_SERVER_URL/_API_KEY define the one named 'server', LORAPLEX_JUDGE_URL/_API_KEY "
        "the one named 'judge'.",
    )
    data_dirs: list[Path] = Field(
        default_factory=list,
        description="Directories whose files an evaluation request may name as data, suite or "
        "policy (JSON list). Empty: the data directory and the checkout's examples/.",
    )
    eval_threads: int = Field(default=0, ge=0, description="torch threads; 0: torch's default")
    worker_poll_s: float = Field(default=2.0, gt=0, description="worker queue poll interval")
    worker_heartbeat_s: float = Field(default=10.0, gt=0, description="heartbeat interval")
    worker_stale_s: float = Field(
        default=120.0, gt=0, description="a running run without heartbeat this long is requeued"
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, value: dict[str, Endpoint]) -> dict[str, Endpoint]:
        for name in value:
            if not ENDPOINT_NAME_RE.match(name):
                raise ValueError(
                    f"endpoint name {name!r} is invalid: use 1-64 lowercase letters, digits, "
                    "'_' or '-', starting with a letter"
                )
        return value

    def named_endpoints(self) -> dict[str, Endpoint]:
        """Every endpoint by name: LORAPLEX_ENDPOINTS plus 'server' and 'judge' from their own
        variables (an entry of LORAPLEX_ENDPOINTS with the same name wins)."""
        out: dict[str, Endpoint] = {}
        if self.server_url:
            # model_construct: these variables predate the URL check and keep their old leniency.
            out["server"] = Endpoint.model_construct(
                url=self.server_url.rstrip("/"), api_key=self.server_api_key
            )
        if self.judge_url:
            out["judge"] = Endpoint.model_construct(
                url=self.judge_url.rstrip("/"), api_key=self.judge_api_key
            )
        out.update(self.endpoints)
        return out

    def allowed_data_dirs(self) -> list[Path]:
        """Resolved directories a request's file paths must lie under."""
        dirs = self.data_dirs or [self.data_dir, REPO_EXAMPLES]
        return [d.expanduser().resolve() for d in dirs]

    @property
    def evaluations_dir(self) -> Path:
        return self.data_dir / "evaluations"

    @property
    def eval_cache_dir(self) -> Path:
        return self.data_dir / "cache" / "evaluator"
