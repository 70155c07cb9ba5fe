"""The base model an imported adapter says it was trained on, against the one this server serves.

PEFT writes the base it trained on into ``adapter_config.json`` (``base_model_name_or_path``).
Tensor shapes alone cannot tell two bases of one architecture apart, so an adapter that names
another base is refused at import unless the name is one the served base answers to (its registry
name, its folder, its hub id, ``base_model_aliases``) or an operator states, with a reason, that
the declared name is this base. The outcome goes into the version's manifest (its lineage) under
``declared_base``: how the declaration was accepted, and by whom when it took a statement.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from services.server.validation import BaseIdentity
from shared.errors import ValidationError

CONFIG_FIELD = "base_model_name_or_path"
CLI_FLAG = "--declared-base-is-this-base"
API_FIELD = "declared_base_ok"
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


@dataclass(frozen=True)
class BaseStatement:
    """An operator's statement that the adapter's declared base is the served base."""

    actor: str
    reason: str


def is_path(value: str) -> bool:
    """Whether a declared name is a local folder rather than a registry name or hub id."""
    return value.startswith(("/", "./", "../", "~", "\\")) or bool(_WINDOWS_PATH.match(value))


def _last_component(value: str) -> str:
    path = PureWindowsPath(value) if "\\" in value else PurePosixPath(value)
    return path.name


def base_names(base: BaseIdentity) -> dict[str, str]:
    """Lower-cased names the served base answers to -> which kind of name each is."""
    names: dict[str, str] = {}
    for alias in base.aliases:
        names.setdefault(alias.strip().rstrip("/\\").lower(), "alias")
    if base.path is not None:
        names[str(base.path).rstrip("/\\").lower()] = "path"
        names.setdefault(base.path.name.lower(), "path")
    names[base.name.lower()] = "name"
    names.pop("", None)
    return names


def match_declared(declared: str, base: BaseIdentity) -> str | None:
    """How ``declared`` names the served base (``name``, ``path``, ``alias``), None if not.

    Case-insensitive; a declared local folder also matches by its last component, since the
    folder an adapter was trained against is seldom where this server keeps the base."""
    names = base_names(base)
    value = declared.strip().rstrip("/\\").lower()
    found = names.get(value)
    if found is None and is_path(value):
        found = names.get(_last_component(value))
    return found


def check_declared_base(
    config: dict[str, Any], base: BaseIdentity, statement: BaseStatement | None = None
) -> dict[str, Any]:
    """The lineage record of the adapter's declared base; ValidationError if it names another
    base and no statement says it is this one."""
    if statement is not None and not statement.reason.strip():
        raise ValidationError(
            "stating that the declared base is this base needs a reason (it is recorded)",
            param="reason",
        )
    raw = config.get(CONFIG_FIELD)
    declared = raw.strip() if isinstance(raw, str) else ("" if raw is None else str(raw))
    record: dict[str, Any] = {"declared": declared or None, "served": base.name}
    if not declared:
        return {**record, "accepted_as": "undeclared"}
    matched = match_declared(declared, base)
    if matched is not None:
        return {**record, "accepted_as": matched}
    if statement is None:
        known = ", ".join(sorted({base.name, *base.aliases}))
        raise ValidationError(
            f"the adapter declares base model {declared!r} ({CONFIG_FIELD} in "
            f"adapter_config.json), but this server serves {base.name!r}; an adapter trained on "
            "another base can fit its shapes and still answer wrongly",
            param=CONFIG_FIELD,
            code="base_model_mismatch",
            details=[
                f"{base.name!r} answers to: {known}",
                f"if {declared!r} is this base, say so: `loraplex adapters import {CLI_FLAG} "
                f"--reason ...` or the admin API form fields {API_FIELD}=true and reason (both "
                "recorded in the version's lineage), or add the name to LORAPLEX_BASE_MODEL_ALIASES",
            ],
        )
    return {
        **record,
        "accepted_as": "stated",
        "accepted_by": statement.actor,
        "reason": statement.reason.strip(),
        "stated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
