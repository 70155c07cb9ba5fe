"""Names in the registry: adapter names, aliases, version ids, and how a baseline names the base.

Kept apart from :mod:`shared.registry.adapters` so the rules of a name (used by every API and CLI
to validate before anything is read from the database) are one small module.
"""

from __future__ import annotations

import re

from shared.errors import ValidationError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
VERSION_ID_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,62})@v(?P<number>[1-9][0-9]*)$")
DEFAULT_ALIAS = "prod"
# How services.evaluator names the bare base model as a baseline (subjects.BASE_KEYWORDS); the
# default ``first_baseline`` of a protected alias.
BASE_BASELINE = "base"
# ``<base>+fewshot:K``: that base model prompted with K examples from the candidate's training
# data (services.evaluator.fewshot); ``base+fewshot:4`` names the candidate's own base.
FEWSHOT_RE = re.compile(r"^(?P<base>.+)\+fewshot:(?P<k>[0-9]+)$")
MAX_FEWSHOT = 16


def parse_fewshot(name: str, param: str = "baseline") -> tuple[str, int] | None:
    """(base name, K) of a few-shot baseline name, None for any other name; K out of range is an
    error rather than another name."""
    found = FEWSHOT_RE.match(name.strip())
    if found is None:
        return None
    k = int(found["k"])
    if not 1 <= k <= MAX_FEWSHOT:
        raise ValidationError(
            f"{param} {name!r}: the number of examples must be 1-{MAX_FEWSHOT}", param=param
        )
    return found["base"], k


def first_baselines(value: str) -> list[str]:
    """The baselines a protected alias's first release must beat, in order: ``first_baseline``
    holds one name or several, comma-separated (``base,base+fewshot:4``: the best of the base
    model zero-shot and shown 4 examples)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def check_adapter_name(name: str, param: str = "name") -> str:
    if not NAME_RE.match(name):
        raise ValidationError(
            f"adapter name {name!r} is invalid: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            param=param,
        )
    return name


def check_alias(alias: str, param: str = "alias") -> str:
    if not ALIAS_RE.match(alias):
        raise ValidationError(
            f"alias {alias!r} is invalid: use 1-32 lowercase letters, digits, '_' or '-', "
            "starting with a letter",
            param=param,
        )
    return alias


def version_id(name: str, number: int) -> str:
    return f"{name}@v{number}"
