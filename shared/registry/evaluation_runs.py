"""Evaluation runs in the registry: the promotion record's columns, and reads of runs by the version
they evaluated (the server's model cards list them).

A run's promotion record (``{"alias", "adapter", "name", "to", "from", "moved", "state", ...}``,
written by the evaluator) is stored in three columns: ``promotion_alias`` and ``promotion_state``
(indexed: the worker looks for pending ones) and ``promotion_detail`` (everything else).
:func:`promotion_columns` splits a record into them; :func:`promotion_record` joins them back, keys
in the order the evaluator writes them, so the API and CLI show the same JSON as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.registry.models import EvaluationRunRow

# The order of a promotion record's keys as the evaluator builds them; unknown keys follow.
PROMOTION_KEYS = ("alias", "adapter", "name", "to", "from", "moved", "state", "why", "reason")
_COLUMNS = {"alias": "promotion_alias", "state": "promotion_state"}


def promotion_columns(promotion: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run row's column values that store ``promotion`` (None: no promotion)."""
    if promotion is None:
        return {"promotion_alias": None, "promotion_state": None, "promotion_detail": None}
    values: dict[str, Any] = {column: promotion.get(key) for key, column in _COLUMNS.items()}
    values["promotion_detail"] = {k: v for k, v in promotion.items() if k not in _COLUMNS}
    return values


def promotion_record(row: EvaluationRunRow) -> dict[str, Any] | None:
    """The promotion record :func:`promotion_columns` stored on ``row`` (None: none)."""
    if row.promotion_detail is None and row.promotion_state is None:
        return None
    record = dict(row.promotion_detail or {})
    for key, column in _COLUMNS.items():
        if (value := getattr(row, column)) is not None:
            record[key] = value
    rank = {key: i for i, key in enumerate(PROMOTION_KEYS)}
    return dict(sorted(record.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def latest_runs_by_candidate(
    session: Session, candidates: Iterable[str], per_candidate: int = 3
) -> dict[str, list[EvaluationRunRow]]:
    """The newest ``per_candidate`` runs of each candidate version, newest first; candidates with
    no run are absent."""
    wanted = list(candidates)
    if not wanted:
        return {}
    out: dict[str, list[EvaluationRunRow]] = {}
    rows = session.scalars(
        select(EvaluationRunRow)
        .where(EvaluationRunRow.candidate.in_(wanted))
        .order_by(EvaluationRunRow.created_at.desc())
    )
    for row in rows:
        runs = out.setdefault(row.candidate, [])
        if len(runs) < per_candidate:
            runs.append(row)
    return out
