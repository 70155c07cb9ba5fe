"""A work queue on registry rows (training jobs, evaluation runs), safe with several workers.

A worker claims a row with one conditional UPDATE (compare-and-set on status, owner and heartbeat),
so two workers can never own the same row. It then heartbeats; a row whose owner stopped
heartbeating (killed, machine lost) becomes claimable again after ``stale_after_s`` and the new owner
resumes it from its last checkpoint.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.registry.models import EvaluationRunRow, TrainingJobRow, utcnow

Row = TypeVar("Row", TrainingJobRow, EvaluationRunRow)


def claim_next(
    session: Session,
    row_cls: type[Row],
    worker_id: str,
    *,
    stale_after_s: float,
    queued: str = "queued",
    running: str = "running",
    extra: dict[str, Any] | None = None,
) -> Row | None:
    """Take the oldest queued row, or a running one whose owner went silent; None if there is none.

    ``extra`` holds further column values to set on the claimed row (e.g. ``started_at``).
    """
    stale_before = utcnow() - timedelta(seconds=stale_after_s)
    candidates = session.scalars(
        select(row_cls)
        .where(
            or_(
                row_cls.status == queued,
                (row_cls.status == running) & (row_cls.heartbeat_at < stale_before),
            )
        )
        .order_by(row_cls.created_at)
        .limit(10)
    ).all()
    for row in candidates:
        seen_status, seen_worker, seen_beat = row.status, row.worker_id, row.heartbeat_at
        conditions = [row_cls.id == row.id, row_cls.status == seen_status]
        conditions.append(
            row_cls.worker_id.is_(None) if seen_worker is None else row_cls.worker_id == seen_worker
        )
        conditions.append(
            row_cls.heartbeat_at.is_(None)
            if seen_beat is None
            else row_cls.heartbeat_at == seen_beat
        )
        values: dict[str, Any] = {
            "status": running,
            "worker_id": worker_id,
            "heartbeat_at": utcnow(),
        }
        values.update(extra or {})
        result = session.execute(
            update(row_cls)
            .where(*conditions)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            session.flush()
            session.expire(row)
            return row
    return None


def heartbeat(session: Session, row_cls: type[Row], row_id: str, worker_id: str) -> bool:
    """Refresh the claim; False means another worker took the row over (stop working on it)."""
    result = session.execute(
        update(row_cls)
        .where(row_cls.id == row_id, row_cls.worker_id == worker_id)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
