"""Adapters, their immutable versions, aliases (compare-and-set); pins, names and version reads
re-exported.

Every alias move goes through :func:`set_alias`, whatever the caller (evaluator promotion, server
admin API, CLI, release flow), so the move rules (:mod:`shared.registry.move_rules`: same base
model and servable; on a protected alias, passing evidence or a forced move with a reason) are
checked there, in the move's own transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from shared.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from shared.logs import event
from shared.registry.models import (
    AdapterRow,
    AdapterVersionRow,
    AliasEventRow,
    AliasRow,
    BaseModelRow,
    ProtectedAliasRow,
    utcnow,
)
from shared.registry.move_rules import check_evidence, check_target, fmt_base

# Re-exported: callers name them through this module (``adapters.check_alias`` and so on).
from shared.registry.names import BASE_BASELINE as BASE_BASELINE
from shared.registry.names import DEFAULT_ALIAS as DEFAULT_ALIAS
from shared.registry.names import VERSION_ID_RE as VERSION_ID_RE
from shared.registry.names import check_adapter_name as check_adapter_name
from shared.registry.names import check_alias as check_alias
from shared.registry.names import version_id as version_id
from shared.registry.pins import list_pins as list_pins
from shared.registry.pins import pin as pin
from shared.registry.pins import unpin as unpin
from shared.registry.versions import get_version as get_version
from shared.registry.versions import list_versions as list_versions

log = logging.getLogger(__name__)


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
    # A name keeps one meaning: its aliases could otherwise be moved to a model of another base.
    bound = bound_base_identity(session, new.adapter_name)
    if bound is not None and bound != (base.name, base.weights_sha256):
        raise ConflictError(
            f"adapter name {new.adapter_name!r} is bound to base model {fmt_base(bound)} (the "
            f"base of its first version); a version on {fmt_base((base.name, base.weights_sha256))}"
            " must be registered under another name",
            param="base_model",
            code="base_model_mismatch",
        )
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


def get_alias(session: Session, adapter_name: str, alias: str) -> AliasRow | None:
    return session.get(AliasRow, (adapter_name, alias))


def bound_base_model(session: Session, adapter_name: str) -> str | None:
    """The base model an adapter name is bound to: that of its first version (None: no versions).

    Every later version of the name must be on the same base, so a name never changes meaning."""
    bound = bound_base_identity(session, adapter_name)
    return bound[0] if bound else None


def bound_base_identity(session: Session, adapter_name: str) -> tuple[str, str] | None:
    """``(base_model, base_model_sha256)`` of the name's first version (None: no versions)."""
    row = session.execute(
        select(AdapterVersionRow.base_model, AdapterVersionRow.base_model_sha256)
        .where(AdapterVersionRow.adapter_name == adapter_name)
        .order_by(AdapterVersionRow.version)
        .limit(1)
    ).first()
    return (row[0], row[1]) if row is not None else None


def lock_alias(session: Session, adapter_name: str, alias: str) -> AliasRow | None:
    """The alias row, re-read and locked until the transaction ends (PostgreSQL; SQLite's
    ``BEGIN IMMEDIATE`` already serialises writers), so a move and a protection change cannot
    interleave between their checks and their writes."""
    return session.scalar(
        select(AliasRow)
        .where(AliasRow.adapter_name == adapter_name, AliasRow.alias == alias)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def list_aliases(session: Session) -> list[AliasRow]:
    return list(session.scalars(select(AliasRow).order_by(AliasRow.adapter_name, AliasRow.alias)))


_UNSET: Any = object()


@dataclass(frozen=True)
class MovePlan:
    """A move :func:`check_move` allows: the target, the alias now, and whether it is forced."""

    target: AdapterVersionRow
    current: AliasRow | None
    protection: ProtectedAliasRow | None
    forced: bool

    @property
    def previous(self) -> str | None:
        return self.current.version_id if self.current is not None else None


def check_move(
    session: Session,
    adapter_name: str,
    alias: str,
    to_version: str,
    *,
    expected: str | None = _UNSET,
    evaluation_run_id: str | None = None,
    force: bool = False,
    reason: str = "",
    lock: bool = False,
) -> MovePlan:
    """Every rule of an alias move, without moving: raises what :func:`set_alias` would raise.

    Callers may run it first to refuse early (the server does, before loading the version); the
    move itself runs it again in its own transaction, which is the check that counts.
    """
    check_alias(alias)
    if force and not reason.strip():
        raise ValidationError(
            "force needs a reason: a forced move is recorded in the alias history", param="reason"
        )
    target = get_version(session, to_version)
    if target.adapter_name != adapter_name:
        raise ValidationError(
            f"version {to_version} belongs to adapter {target.adapter_name!r}, not {adapter_name!r}",
            param="version",
        )
    current = (
        lock_alias(session, adapter_name, alias)
        if lock
        else get_alias(session, adapter_name, alias)
    )
    previous = current.version_id if current is not None else None
    if expected is not _UNSET and expected != previous:
        raise ConflictError(
            f"alias {adapter_name}:{alias} is at {previous or 'nothing'}, expected "
            f"{expected or 'nothing'}; someone else moved it",
            param="expected",
        )
    now = get_version(session, previous) if previous is not None else None
    bound = bound_base_identity(session, target.adapter_name)
    check_target(session, f"{adapter_name}:{alias}", target, now, bound)
    protection = session.get(ProtectedAliasRow, (adapter_name, alias))
    if protection is not None and not force:
        check_evidence(
            session, f"{adapter_name}:{alias}", protection, target, previous, evaluation_run_id
        )
    return MovePlan(target, current, protection, forced=protection is not None and force)


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
    force: bool = False,
) -> AliasRow:
    """Point ``adapter_name:alias`` at ``to_version``.

    ``expected`` is the compare-and-set guard: the version the caller believes the alias holds now
    (``None``: the alias must not exist yet). Omit it to move unconditionally. A mismatch raises
    :class:`ConflictError` and changes nothing; the check and the write are one UPDATE statement, so
    two promoters cannot interleave.

    The move rules (see the module docstring) run first: another base model or an unservable
    target raises 409/422; a protected alias without ``evaluation_run_id`` of a passing evaluation
    of this exact move under its policy raises :class:`ForbiddenError` (403). ``force`` with a
    non-empty ``reason`` skips only the evidence rule and is recorded as forced.
    """
    plan = check_move(
        session,
        adapter_name,
        alias,
        to_version,
        expected=expected,
        evaluation_run_id=evaluation_run_id,
        force=force,
        reason=reason,
        lock=True,
    )
    current, previous = plan.current, plan.previous
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
            forced=plan.forced,
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
        "forced": plan.forced,
    }
    level = logging.WARNING if plan.forced else logging.INFO
    # Logged when the move is committed, so a rolled-back transaction never shows as a move.
    sa_event.listen(
        session,
        "after_commit",
        lambda _s: event(log, "alias.moved", level, **fields),
        once=True,
    )
    return row


def alias_history(session: Session, adapter_name: str, alias: str) -> list[AliasEventRow]:
    """Newest first: who moved the alias from what to what, why, on which evidence, forced or not."""
    return list(
        session.scalars(
            select(AliasEventRow)
            .where(AliasEventRow.adapter_name == adapter_name, AliasEventRow.alias == alias)
            .order_by(AliasEventRow.id.desc())
        )
    )


def rollback_alias(
    session: Session, adapter_name: str, alias: str, *, actor: str = "", reason: str = ""
) -> AliasRow:
    """Move the alias back to the version it held before its last move.

    On a protected alias a rollback is an override (no evaluation compares the old version with
    the new one): it needs a ``reason`` and is recorded as forced. Base and servability still hold.
    """
    current = get_alias(session, adapter_name, alias)
    if current is None:
        raise NotFoundError(f"alias {adapter_name}:{alias} does not exist", param="alias")
    history = alias_history(session, adapter_name, alias)
    last = history[0] if history else None
    if last is None or last.from_version is None:
        raise ConflictError(
            f"alias {adapter_name}:{alias} has no earlier version to roll back to", param="alias"
        )
    protected = session.get(ProtectedAliasRow, (adapter_name, alias)) is not None
    if protected and not reason.strip():
        raise ForbiddenError(
            f"alias {adapter_name}:{alias} is protected: a rollback needs a reason (it is recorded "
            "as a forced move)",
            param="reason",
        )
    note = f"rollback from {current.version_id}" + (f": {reason.strip()}" if reason.strip() else "")
    return set_alias(
        session,
        adapter_name,
        alias,
        last.from_version,
        expected=current.version_id,
        actor=actor,
        reason=note,
        force=protected,
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
