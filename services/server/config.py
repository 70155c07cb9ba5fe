"""Server settings (env prefix ``LORAPLEX_``), validated at start-up."""

from __future__ import annotations

import json
import shlex
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.servability import VLLM_RANKS
from shared.settings import SharedSettings

ALL_ADAPTERS = "*"


class ServerSettings(SharedSettings):
    """Settings of ``loraplex serve``: the public API, the vLLM engines and the adapter manager."""

    host: str = Field(default="127.0.0.1", description="Address the public API binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the public API.")

    # -- engines ---------------------------------------------------------------------------------
    engine_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Attach mode: base URLs of running vLLM OpenAI servers (runtime LoRA updating "
        "on). Empty: the server starts and supervises engine_count engines itself.",
    )
    engine_count: int = Field(default=1, ge=1, le=64, description="Engines to start.")
    engine_host: str = Field(default="127.0.0.1", description="Loopback address for engines.")
    engine_base_port: int = Field(
        default=0, ge=0, le=65535, description="First private engine port; 0 picks free ports."
    )
    engine_python: str = Field(default="", description="Python for engines; empty: this one.")
    engine_executor_backend: str = Field(
        default="uni",
        description="vLLM --distributed-executor-backend. 'uni' runs the model in the engine-core "
        "process (one process and one vLLM import fewer per engine: restarts about a third "
        "faster); empty: vLLM's default.",
    )
    engine_extra_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra command-line arguments for every vLLM engine."
    )
    engine_startup_timeout_s: float = Field(default=600.0, gt=0)
    engine_health_interval_s: float = Field(default=2.0, gt=0)
    engine_health_timeout_s: float = Field(
        default=5.0, gt=0, description="An engine that does not answer /health in time is down."
    )
    engine_unhealthy_after: int = Field(
        default=3, ge=1, description="Failed health checks in a row before a restart."
    )
    engine_restart_backoff_s: float = Field(default=1.0, gt=0)
    engine_restart_backoff_max_s: float = Field(default=30.0, gt=0)
    engines_patched: bool = Field(
        default=False,
        description="Attach mode: the engines run the loraplex vLLM plugin, so prompt "
        "log-probability requests need no isolation. Managed engines are detected.",
    )
    engine_artifact_dir: str = Field(
        default="",
        description="Attach mode: where the engines see the artifact store (a shared volume "
        "mounted elsewhere). Empty: the same path as here.",
    )
    max_loras: int = Field(default=4, ge=1, description="Adapters per batch (vLLM --max-loras).")
    max_cpu_loras: int = Field(
        default=16, ge=1, description="Adapters resident per engine (vLLM --max-cpu-loras)."
    )
    max_lora_rank: int = Field(default=16, description="vLLM --max-lora-rank.")
    max_model_len: int = Field(default=2048, ge=16, description="vLLM --max-model-len.")
    # 128 rather than 64: a CPU engine answered 4% more orders/s at 128 concurrent sequences
    # (bench/engine_layout.py, fp32, 2 cores), and the KV cache (kv_cache_gib) bounds memory.
    max_num_seqs: int = Field(default=128, ge=1, description="vLLM --max-num-seqs.")
    kv_cache_gib: float = Field(
        default=2.0, gt=0, description="KV cache per engine on CPU (VLLM_CPU_KVCACHE_SPACE)."
    )
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    # -- full fine-tunes: models with engines of their own ------------------------------------
    max_model_engines: int = Field(
        default=3,
        ge=1,
        le=64,
        description="Engines this server runs at once, the base model's included. A full "
        "fine-tune an alias or pin names gets an engine of its own, and a hot swap between two "
        "full versions runs both until the switch: the default 3 is the base, one full model "
        "and the one a swap starts (about 1.5 GiB each on CPU with the small models, plus KV "
        "cache).",
    )
    full_kv_cache_gib: int = Field(
        default=1,
        ge=1,
        description="KV cache of each full fine-tune's engine on CPU in whole GiB "
        "(VLLM_CPU_KVCACHE_SPACE, which vLLM reads as an integer).",
    )
    full_engine_urls: dict[str, str] = Field(
        default_factory=dict,
        description="Full version id -> base URL of a running engine that serves it under its "
        "version id (one engine Deployment per served model; it is watched, not started). Other "
        "full versions get an engine started here (or are refused in attach mode). JSON, e.g. "
        '{"support-full@v2": "http://full-v2:8000"}.',
    )
    dtype: str = Field(default="auto", description="vLLM --dtype.")

    base_model_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Other names the served base model answers to (e.g. its hub id): an imported "
        "adapter whose adapter_config.json names one of them is accepted as trained on it. JSON "
        "list or comma-separated.",
    )

    # -- access ----------------------------------------------------------------------------------
    admin_key: SecretStr | None = Field(
        default=None, description="Enables /admin; sent as 'Authorization: Bearer <key>'."
    )
    api_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Inference keys -> adapter names they may use ('*': all, the base model by "
        'its name). JSON, e.g. {"sk-a": ["*"], "sk-b": ["support-bot"]}. Empty: /v1 is open.',
    )

    request_summary_s: float = Field(
        default=60.0,
        ge=0,
        description="How often the log gets a requests.summary line (counts since the last one, "
        "only when there was traffic); 0 turns it off.",
    )

    # -- adapters --------------------------------------------------------------------------------
    reconcile_interval_s: float = Field(
        default=1.0, gt=0, description="How often the registry (desired state) is read."
    )
    drain_timeout_s: float = Field(
        default=300.0, gt=0, description="Longest wait for in-flight requests before an unload."
    )
    canary_check: bool = Field(
        default=False,
        description="After loading, require the adapter's next-token log-probabilities on a "
        "fixed prompt to differ from the base model's.",
    )
    load_timeout_s: float = Field(default=120.0, gt=0)

    # -- proxy and metrics -----------------------------------------------------------------------
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest wait for an engine's response headers."
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    metrics_max_adapters: int = Field(
        default=100,
        ge=1,
        description="Distinct adapter versions labelled in /metrics; the rest count as 'other'.",
    )
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After on 503 answers.")

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int) -> int:
        if value not in VLLM_RANKS:
            raise ValueError(f"max_lora_rank {value} is not one vLLM accepts {VLLM_RANKS}")
        return value

    @field_validator("engine_urls", "base_model_aliases", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        """From the environment: a JSON list or comma-separated values."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @field_validator("engine_extra_args", mode="before")
    @classmethod
    def _split_args(cls, value: Any) -> Any:
        """From the environment: a JSON list or a shell-style string."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return shlex.split(value)
        return value

    @field_validator("engine_urls")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"engine URL {url!r} must start with http:// or https://")
        return [u.rstrip("/") for u in value]

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras "
                f"({self.max_loras}), as vLLM requires"
            )
        if not self.attach_mode and self.engine_count > self.max_model_engines:
            raise ValueError(
                f"engine_count ({self.engine_count}) is above max_model_engines "
                f"({self.max_model_engines})"
            )
        for vid, url in self.full_engine_urls.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"full_engine_urls[{vid!r}] {url!r} must start with http(s)://")
        for key, names in self.api_keys.items():
            if not key:
                raise ValueError("api_keys holds an empty key")
            if not names:
                raise ValueError(
                    f"api key ...{key[-4:]} allows no adapter; list names or '{ALL_ADAPTERS}'"
                )
        return self

    @property
    def attach_mode(self) -> bool:
        return bool(self.engine_urls)
