"""Adapters, their immutable versions, aliases (compare-and-set) and pins."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from shared.errors import ConflictError, NotFoundError, ValidationError
from shared.logs import event
from shared.registry.models import (
    AdapterRow,
    AdapterVersionRow,
    AliasEventRow,
    AliasRow,
    BaseModelRow,
    PinRow,
    utcnow,
)

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
VERSION_ID_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,62})@v(?P<number>[1-9][0-9]*)$")
DEFAULT_ALIAS = "prod"


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


@dataclass(frozen=True)
class NewVersion:
    adapter_name: str
    sha256: str
    base_model: str
    rank: int
    size_bytes: int
    manifest: dict[str, Any]
    job_id: str | None = None


def register_version(session: Session, new: NewVersion) -> tuple[AdapterVersionRow, bool]:
    """Register a version; the same content under the same name returns the existing one.

    Returns ``(row, created)``. Content addressing makes this idempotent, which is what lets a
    resumed training job finish without producing a second version.
    """
    check_adapter_name(new.adapter_name, "adapter_name")
    base = session.get(BaseModelRow, new.base_model)
    if base is None:
        raise NotFoundError(f"base model {new.base_model!r} is not registered", param="base_model")
    existing = session.scalar(
        select(AdapterVersionRow).where(
            AdapterVersionRow.adapter_name == new.adapter_name,
            AdapterVersionRow.sha256 == new.sha256,
        )
    )
    if existing is not None:
        return existing, False
    if session.get(AdapterRow, new.adapter_name) is None:
        session.add(AdapterRow(name=new.adapter_name))
        session.flush()
    number = (
        session.scalar(
            select(func.max(AdapterVersionRow.version)).where(
                AdapterVersionRow.adapter_name == new.adapter_name
            )
        )
        or 0
    ) + 1
    row = AdapterVersionRow(
        id=version_id(new.adapter_name, number),
        adapter_name=new.adapter_name,
        version=number,
        sha256=new.sha256,
        base_model=base.name,
        base_model_sha256=base.weights_sha256,
        rank=new.rank,
        size_bytes=new.size_bytes,
        manifest=new.manifest,
        job_id=new.job_id,
    )
    session.add(row)
    try:
        session.flush()
    except SAIntegrityError as exc:
        raise ConflictError(
            f"version {row.id} was registered concurrently with other content; retry",
            param="adapter_name",
        ) from exc
    return row, True


def get_version(session: Session, vid: str) -> AdapterVersionRow:
    row = session.get(AdapterVersionRow, vid)
    if row is None:
        raise NotFoundError(f"adapter version {vid!r} does not exist", param="version")
    return row


def list_versions(session: Session, adapter_name: str | None = None) -> list[AdapterVersionRow]:
    stmt = select(AdapterVersionRow).order_by(
        AdapterVersionRow.adapter_name, AdapterVersionRow.version
    )
    if adapter_name is not None:
        stmt = stmt.where(AdapterVersionRow.adapter_name == adapter_name)
    return list(session.scalars(stmt))


def get_alias(session: Session, adapter_name: str, alias: str) -> AliasRow | None:
    return session.get(AliasRow, (adapter_name, alias))


def list_aliases(session: Session) -> list[AliasRow]:
    return list(session.scalars(select(AliasRow).order_by(AliasRow.adapter_name, AliasRow.alias)))


_UNSET: Any = object()


def set_alias(
    session: Session,
    adapter_name: str,
    alias: str,
    to_version: str,
    *,
    expected: str | None = _UNSET,
    evaluation_run_id: str | None = None,
    actor: str = "",
    reason: str = "",
) -> AliasRow:
    """Point ``adapter_name:alias`` at ``to_version``.

    ``expected`` is the compare-and-set guard: the version the caller believes the alias holds now
    (``None``: the alias must not exist yet). Omit it to move unconditionally. A mismatch raises
    :class:`ConflictError` and changes nothing; the check and the write are one UPDATE statement, so
    two promoters cannot interleave.
    """
    check_alias(alias)
    target = get_version(session, to_version)
    if target.adapter_name != adapter_name:
        raise ValidationError(
            f"version {to_version} belongs to adapter {target.adapter_name!r}, not {adapter_name!r}",
            param="version",
        )
    current = get_alias(session, adapter_name, alias)
    previous = current.version_id if current is not None else None
    if expected is not _UNSET and expected != previous:
        raise ConflictError(
            f"alias {adapter_name}:{alias} is at {previous or 'nothing'}, expected "
            f"{expected or 'nothing'}; someone else moved it",
            param="expected",
        )
    if current is None:
        row = AliasRow(adapter_name=adapter_name, alias=alias, version_id=to_version, revision=1)
        session.add(row)
        try:
            session.flush()
        except SAIntegrityError as exc:
            raise ConflictError(
                f"alias {adapter_name}:{alias} was created concurrently", param="expected"
            ) from exc
    else:
        result = session.execute(
            update(AliasRow)
            .where(
                AliasRow.adapter_name == adapter_name,
                AliasRow.alias == alias,
                AliasRow.version_id == previous,
                AliasRow.revision == current.revision,
            )
            .values(version_id=to_version, revision=AliasRow.revision + 1, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise ConflictError(
                f"alias {adapter_name}:{alias} moved while this change was being made; retry",
                param="expected",
            )
        session.expire(current)
        row = current
    session.add(
        AliasEventRow(
            adapter_name=adapter_name,
            alias=alias,
            from_version=previous,
            to_version=to_version,
            evaluation_run_id=evaluation_run_id,
            actor=actor,
            reason=reason,
        )
    )
    session.flush()
    fields: dict[str, Any] = {
        "alias": f"{adapter_name}:{alias}",
        "from_version": previous,
        "to_version": to_version,
        "actor": actor,
        "reason": reason,
        "evaluation": evaluation_run_id,
    }
    # Logged when the move is committed, so a rolled-back transaction never shows as a move.
    sa_event.listen(
        session,
        "after_commit",
        lambda _s: event(log, "alias.moved", logging.INFO, **fields),
        once=True,
    )
    return row


def alias_history(session: Session, adapter_name: str, alias: str) -> list[AliasEventRow]:
    return list(
        session.scalars(
            select(AliasEventRow)
            .where(AliasEventRow.adapter_name == adapter_name, AliasEventRow.alias == alias)
            .order_by(AliasEventRow.id.desc())
        )
    )


def rollback_alias(session: Session, adapter_name: str, alias: str, *, actor: str = "") -> AliasRow:
    """Move the alias back to the version it held before its last move."""
    current = get_alias(session, adapter_name, alias)
    if current is None:
        raise NotFoundError(f"alias {adapter_name}:{alias} does not exist", param="alias")
    history = alias_history(session, adapter_name, alias)
    last = history[0] if history else None
    if last is None or last.from_version is None:
        raise ConflictError(
            f"alias {adapter_name}:{alias} has no earlier version to roll back to", param="alias"
        )
    return set_alias(
        session,
        adapter_name,
        alias,
        last.from_version,
        expected=current.version_id,
        actor=actor,
        reason=f"rollback from {current.version_id}",
    )


def resolve(session: Session, name: str) -> AdapterVersionRow:
    """``name@vN`` -> that version; ``name:alias`` or bare ``name`` (alias ``prod``) -> its target."""
    if VERSION_ID_RE.match(name):
        return get_version(session, name)
    adapter, _, alias = name.partition(":")
    alias = alias or DEFAULT_ALIAS
    row = get_alias(session, adapter, alias)
    if row is None:
        raise NotFoundError(f"no adapter version or alias named {name!r}", param="model")
    return get_version(session, row.version_id)


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
