"""Settings shared by every service (env prefix ``LORAPLEX_``), validated at construction.

Each service has its own settings class that inherits from :class:`SharedSettings`, so one
environment configures the whole suite and a typo'd value fails at start-up with the variable named.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from shared.errors import ConfigError

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


S = TypeVar("S", bound=SharedSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings, turning pydantic's error list into one readable :class:`ConfigError`."""
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
