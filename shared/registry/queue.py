"""A fenced work queue on registry rows (training jobs, evaluation runs), safe with several workers.

- **Claim** is one conditional UPDATE that also increments ``attempts``: ``WHERE id = ? AND
  attempts = <seen> AND <claimable>``. Of two workers racing for a row exactly one update matches,
  and ``attempts`` doubles as a fencing token: each claim has a number no earlier claim had.
- A row is claimable when it waits (``queued``) without an owner, or when its owner stopped
  heartbeating for ``stale_after_s`` (killed, machine lost, or merely paused: a requeued owner may
  still be alive).
- **Every write** of an owner (progress, heartbeat, result, failure, release) goes through
  :func:`guarded_update`, whose WHERE clause names the owner *and* the attempt. Once another worker
  has claimed the row, the old owner's writes match nothing: they return False (or raise
  :class:`ClaimLost` through :func:`require`) and the old owner must stop without touching
  anything. Run the guarded UPDATE first in a transaction that writes other rows too: it locks
  the row (PostgreSQL row lock, SQLite write lock), so a takeover cannot slip in before the commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from shared.registry.models import EvaluationRunRow, TrainingJobRow, utcnow

Row = TypeVar("Row", TrainingJobRow, EvaluationRunRow)


class ClaimLost(Exception):
    """Another worker owns the row now (or it finished): stop and write nothing more."""


@dataclass(frozen=True)
class Claim:
    """What a worker holds: the row and its attempt (the fencing token) under its worker id."""

    row_id: str
    worker_id: str
    attempt: int
    took_over_from: str | None = None  # the previous owner, when its heartbeat had stopped
    status: str = ""  # the row's status when it was claimed


def claimable(
    row_cls: type[Row],
    *,
    stale_after_s: float,
    waiting: Iterable[str] = ("queued",),
    running: Iterable[str] = ("running",),
) -> ColumnElement[bool]:
    """Waiting rows without an owner, and owned rows whose owner went silent."""
    stale_before = utcnow() - timedelta(seconds=stale_after_s)
    return or_(
        and_(row_cls.status.in_(tuple(waiting)), row_cls.worker_id.is_(None)),
        and_(
            row_cls.status.in_(tuple(running)),
            row_cls.worker_id.is_not(None),
            row_cls.heartbeat_at.is_not(None),
            row_cls.heartbeat_at < stale_before,
        ),
    )


def claim_next(
    session: Session,
    row_cls: type[Row],
    worker_id: str,
    *,
    stale_after_s: float,
    waiting: Iterable[str] = ("queued",),
    running: Iterable[str] = ("running",),
    where: ColumnElement[bool] | None = None,
    set_status: str | None = "running",
    only: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Claim | None:
    """Take the oldest claimable row; None if there is none.

    ``where`` narrows what is claimable, ``set_status`` is the status a claimed row gets (None:
    unchanged), ``only`` claims that row id or nothing, ``extra`` holds further column values to set
    (e.g. ``started_at``). Commit the session promptly: the claim holds the row lock until then.
    """
    condition = claimable(row_cls, stale_after_s=stale_after_s, waiting=waiting, running=running)
    if where is not None:
        condition = and_(condition, where)
    stmt = select(row_cls.id, row_cls.attempts, row_cls.worker_id, row_cls.status).where(condition)
    if only is not None:
        stmt = stmt.where(row_cls.id == only)
    candidates = session.execute(stmt.order_by(row_cls.created_at).limit(10)).all()
    for row_id, attempts, previous, status in candidates:
        seen = int(attempts or 0)
        values: dict[str, Any] = {
            "worker_id": worker_id,
            "heartbeat_at": utcnow(),
            "attempts": seen + 1,
        }
        if set_status is not None:
            values["status"] = set_status
        values.update(extra or {})
        result = session.execute(
            update(row_cls)
            .where(row_cls.id == row_id, row_cls.attempts == seen, condition)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return Claim(str(row_id), worker_id, seen + 1, previous, str(status))
    return None


def fence(row_cls: type[Row], claim: Claim) -> ColumnElement[bool]:
    """The WHERE clause every write of the claim's holder carries."""
    return and_(
        row_cls.id == claim.row_id,
        row_cls.worker_id == claim.worker_id,
        row_cls.attempts == claim.attempt,
    )


def guarded_update(
    session: Session,
    row_cls: type[Row],
    claim: Claim,
    *,
    statuses: Iterable[str] | None = None,
    **values: Any,
) -> bool:
    """Update the row only while ``claim`` still holds it (and, with ``statuses``, only in one of
    those statuses). False: the claim is lost; write nothing else."""
    stmt = update(row_cls).where(fence(row_cls, claim))
    if statuses is not None:
        stmt = stmt.where(row_cls.status.in_(tuple(statuses)))
    result = session.execute(stmt.values(**values).execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def require(
    session: Session,
    row_cls: type[Row],
    claim: Claim,
    *,
    statuses: Iterable[str] | None = None,
    **values: Any,
) -> None:
    """:func:`guarded_update` that raises :class:`ClaimLost` (rolling the transaction back)."""
    if not guarded_update(session, row_cls, claim, statuses=statuses, **values):
        raise ClaimLost(
            f"{row_cls.__tablename__} {claim.row_id}: attempt {claim.attempt} of "
            f"{claim.worker_id} is no longer the owner"
        )


def heartbeat(
    session: Session,
    row_cls: type[Row],
    claim: Claim,
    *,
    statuses: Iterable[str] | None = None,
    **values: Any,
) -> bool:
    """Refresh the claim (and e.g. progress); False means another worker took the row over (or,
    with ``statuses``, that the row has left them: finished)."""
    return guarded_update(
        session, row_cls, claim, statuses=statuses, heartbeat_at=utcnow(), **values
    )


def release(
    session: Session,
    row_cls: type[Row],
    claim: Claim,
    *,
    status: str = "queued",
    statuses: Iterable[str] | None = None,
    **values: Any,
) -> bool:
    """Give the row back (worker shutting down): claimable at once by the next worker."""
    return guarded_update(
        session,
        row_cls,
        claim,
        statuses=statuses,
        status=status,
        worker_id=None,
        heartbeat_at=None,
        **values,
    )
