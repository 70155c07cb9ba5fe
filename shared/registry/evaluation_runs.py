"""Reads of evaluation runs by the version they evaluated (the server's model cards list them)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.registry.models import EvaluationRunRow


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
