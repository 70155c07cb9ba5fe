"""Pinned adapter versions: the server keeps them loaded whatever its eviction policy says."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.registry.models import PinRow
from shared.registry.versions import get_version


def pin(session: Session, vid: str) -> None:
    get_version(session, vid)
    if session.get(PinRow, vid) is None:
        session.add(PinRow(version_id=vid))


def unpin(session: Session, vid: str) -> None:
    row = session.get(PinRow, vid)
    if row is not None:
        session.delete(row)


def list_pins(session: Session) -> list[str]:
    return list(session.scalars(select(PinRow.version_id)))
