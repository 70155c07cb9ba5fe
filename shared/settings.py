"""Settings shared by every service (env prefix ``LORAPLEX_``), validated at construction.

Each service has its own settings class that inherits from :class:`SharedSettings`, so one
environment configures the whole suite and a typo'd value fails at start-up with the variable named.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pydantic
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from shared.auth import KeyRing, KeySpec, load_key_file
from shared.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

EMBEDDED_BASE_MODEL = "smollm2-135m-instruct"


class SharedSettings(BaseSettings):
    """Where data lives and which base model is used. Every field reads ``LORAPLEX_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LORAPLEX_", extra="ignore", validate_default=True)

    data_dir: Path = Field(
        default=Path(".loraplex"),
        description="Directory for the registry database, artifacts and prepared models.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the registry. Empty: SQLite file in the data directory.",
    )
    artifact_url: str = Field(
        default="",
        description="Artifact store: a local directory, or s3://bucket/prefix. Empty: data dir.",
    )
    s3_endpoint_url: str = Field(
        default="",
        description="Endpoint of an S3-compatible store (MinIO, Ceph, moto); empty: AWS itself. "
        "Credentials come from the usual AWS_* variables.",
    )
    base_model: str = Field(
        default=EMBEDDED_BASE_MODEL,
        description="Base model: registry name, local HF folder, or hub id (needs network).",
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: one readable line per event; json: one JSON object per line "
        "(ts, level, service, event, fields) for log collectors.",
    )

    keys: list[KeySpec] = Field(
        default_factory=list,
        description='API keys as a JSON list of {"name", "key", "scopes", "adapters", '
        '"max_concurrent"}; scopes: infer, read, train, evaluate, promote, admin, metrics. '
        "Empty (and no keys_file): every route is open and services bind loopback only.",
    )
    keys_file: Path | None = Field(
        default=None, description="A JSON file of keys in the shape of LORAPLEX_KEYS (a Secret)."
    )
    max_json_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest JSON request body (413 above)."
    )
    max_concurrent_per_key: int = Field(
        default=128,
        ge=1,
        description="In-flight requests per key (429 with Retry-After above); a key's own "
        "max_concurrent overrides it.",
    )

    @field_validator("data_dir")
    @classmethod
    def _data_dir_writable(cls, value: Path) -> Path:
        path = value.expanduser().absolute()
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
                pass
        except OSError as exc:
            raise ValueError(
                f"data directory {path} is not writable ({exc.strerror or exc}); "
                "set LORAPLEX_DATA_DIR to a writable directory"
            ) from exc
        return path

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING or ERROR")
        return level

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value:
            return value  # filled in from data_dir below
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(
                f"{value!r} is not a database URL "
                "(expected e.g. sqlite:///path/registry.db or postgresql+psycopg://host/db)"
            ) from exc
        backend = url.get_backend_name()
        if backend not in {"sqlite", "postgresql"}:
            raise ValueError(f"backend {backend!r} is not supported; use sqlite or postgresql")
        if backend == "postgresql" and url.drivername == "postgresql":
            # psycopg (v3) is the driver we ship; plain postgresql:// would look for psycopg2.
            return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> SharedSettings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'registry.db'}"
        if not self.artifact_url:
            self.artifact_url = str(self.data_dir / "artifacts")
        return self

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def key_specs(self) -> list[KeySpec]:
        """``keys`` plus those of ``keys_file``."""
        return [*self.keys, *(load_key_file(self.keys_file) if self.keys_file else [])]

    def keyring(self) -> KeyRing:
        return KeyRing.from_specs(self.key_specs())


S = TypeVar("S", bound=SharedSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings, turning pydantic's error list into one readable :class:`ConfigError`.

    An unknown ``LORAPLEX_*`` variable stops start-up too: a mistyped ``LORAPLEX_KEYS`` would
    otherwise leave every route open without a word."""
    check_environment(os.environ, cls)
    try:
        return cls(**overrides)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"LORAPLEX_{field.upper()}" if err["loc"] else "LORAPLEX_*"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{field} ({env}): {msg}")
        raise ConfigError(
            "invalid settings", details=lines, param=lines[0] if lines else None
        ) from None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def known_variables(cls: type[SharedSettings] | None = None) -> frozenset[str]:
    """Every ``LORAPLEX_*`` name the suite reads: all services' settings (one environment configures
    the whole suite, so the trainer must accept the server's variables) plus ``cls``'s own."""
    from shared.env_names import KNOWN_VARIABLES

    own = {f"LORAPLEX_{name.upper()}" for name in (cls.model_fields if cls else ())}
    return KNOWN_VARIABLES | own


def check_environment(environ: Mapping[str, str], cls: type[SharedSettings] | None = None) -> None:
    """ConfigError naming each unknown ``LORAPLEX_*`` variable and the closest known one."""
    known = known_variables(cls)
    unknown = sorted(n for n in environ if n.startswith("LORAPLEX_") and n not in known)
    if not unknown:
        return
    lines = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        lines.append(f"{name} is not a loraplex setting{hint}")
    raise ConfigError(
        f"unknown variable {unknown[0]}"
        + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
        details=lines,
        param=unknown[0],
    )
