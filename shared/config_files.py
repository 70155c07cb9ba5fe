"""Reading a YAML config file (a training job, a release) into a pydantic model, with errors a
person can act on: what could not be read, or one ``field.path: message`` line per invalid field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from shared.errors import ConfigError, LoraplexError

M = TypeVar("M", bound=pydantic.BaseModel)


def validation_details(exc: pydantic.ValidationError) -> list[str]:
    """One ``field.path: message`` line per error (without pydantic's ``Value error,`` prefix)."""
    return [
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    ]


def read_mapping(
    path: Path,
    label: str,
    *,
    hint: str = "",
    param: str | None = None,
    error: type[LoraplexError] = ConfigError,
) -> dict[str, Any]:
    """The YAML (or JSON) mapping in ``path``; ``error`` when it cannot be read or is not a
    mapping. ``label`` names the file in messages ("config job.yaml"), ``hint`` says what the
    mapping holds (" of job fields")."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"cannot read {label}: {exc}", param=param) from exc
    if not isinstance(raw, dict):
        raise error(f"{label} must be a mapping{hint}", param=param)
    return raw


def load_model(
    path: Path,
    model: type[M],
    label: str,
    *,
    hint: str = "",
    error: type[LoraplexError] = ConfigError,
) -> M:
    """:func:`read_mapping` validated as ``model``; an invalid field is an ``error`` whose message
    names the first problem and whose details list them all."""
    raw = read_mapping(path, label, hint=hint, param=str(path), error=error)
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        details = validation_details(exc)
        raise error(f"{label} is invalid: {details[0]}", param=str(path), details=details) from exc
