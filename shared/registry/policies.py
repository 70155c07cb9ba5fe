"""Gate policies (versioned, content-hashed) and the aliases they protect.

The registry stores a policy's body and the hash the evaluator computed for it
(``services.evaluator.policy.Policy.sha256()``); it never parses or hashes a policy itself, so one
definition of "the same policy" exists. A protection pins one policy *version* and its hash: a new
version registered later under the same name (by anyone who can run an evaluation) changes nothing
until an admin protects the alias again. The rule itself runs in
:func:`shared.registry.adapters.set_alias`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from shared.errors import ConflictError, NotFoundError, ValidationError
from shared.logs import event
from shared.registry.adapters import (
    BASE_BASELINE,
    VERSION_ID_RE,
    check_adapter_name,
    check_alias,
    lock_alias,
)
from shared.registry.models import (
    BaseModelRow,
    GatePolicyRow,
    ProtectedAliasRow,
    ProtectionEventRow,
)
from shared.registry.names import first_baselines, parse_fewshot

log = logging.getLogger(__name__)

POLICY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_policy_name(name: str, param: str = "policy") -> str:
    if not POLICY_NAME_RE.match(name):
        raise ValidationError(
            f"policy name {name!r} is invalid: use 1-128 lowercase letters, digits, '.', '_' or "
            "'-', starting with a letter or digit",
            param=param,
        )
    return name


def parse_policy_ref(ref: str, param: str = "policy") -> tuple[str, int | None]:
    """``name`` (latest) or ``name@N`` / ``name@vN`` -> ``(name, version or None)``."""
    name, sep, version = ref.strip().partition("@")
    number: int | None = None
    if sep:
        digits = version.removeprefix("v")
        if not digits.isdigit() or int(digits) < 1:
            raise ValidationError(
                f"policy reference {ref!r} is invalid: use NAME or NAME@VERSION", param=param
            )
        number = int(digits)
    return check_policy_name(name, param), number


def register_policy(
    session: Session, name: str, body: dict[str, Any], sha256: str, *, actor: str
) -> GatePolicyRow:
    """Store ``body`` as the next version of ``name``; the latest version with the same hash is
    returned instead of a new one (registering the same policy twice is one version)."""
    check_policy_name(name, "name")
    if not SHA256_RE.match(sha256):
        raise ValidationError("sha256 must be 64 lowercase hex digits", param="sha256")
    latest = _latest(session, name)
    if latest is not None and latest.sha256 == sha256:
        return latest
    row = GatePolicyRow(
        name=name,
        version=(latest.version if latest else 0) + 1,
        sha256=sha256,
        body=body,
        actor=actor,
    )
    session.add(row)
    try:
        session.flush()
    except SAIntegrityError as exc:
        raise ConflictError(
            f"policy {name}@{row.version} was registered concurrently; retry", param="name"
        ) from exc
    event(log, "policy.registered", logging.INFO, policy=f"{name}@{row.version}", actor=actor)
    return row


def _latest(session: Session, name: str) -> GatePolicyRow | None:
    return session.scalar(
        select(GatePolicyRow)
        .where(GatePolicyRow.name == name)
        .order_by(GatePolicyRow.version.desc())
        .limit(1)
    )


def get_policy(session: Session, name: str, version: int | None = None) -> GatePolicyRow:
    """Version ``version`` of policy ``name`` (None: the latest)."""
    if version is None:
        row = _latest(session, name)
    else:
        row = session.scalar(
            select(GatePolicyRow).where(
                GatePolicyRow.name == name, GatePolicyRow.version == version
            )
        )
    if row is None:
        label = name if version is None else f"{name}@{version}"
        raise NotFoundError(f"gate policy {label!r} is not registered", param="policy")
    return row


def list_policies(session: Session, name: str | None = None) -> list[GatePolicyRow]:
    stmt = select(GatePolicyRow).order_by(GatePolicyRow.name, GatePolicyRow.version)
    if name is not None:
        stmt = stmt.where(GatePolicyRow.name == name)
    return list(session.scalars(stmt))


def get_protection(session: Session, adapter_name: str, alias: str) -> ProtectedAliasRow | None:
    return session.get(ProtectedAliasRow, (adapter_name, alias))


def list_protections(session: Session) -> list[ProtectedAliasRow]:
    return list(
        session.scalars(
            select(ProtectedAliasRow).order_by(
                ProtectedAliasRow.adapter_name, ProtectedAliasRow.alias
            )
        )
    )


def _check_first_baseline(session: Session, name: str) -> None:
    # A typo here would leave the alias movable only by force: accept only what an evaluation
    # can name as its baseline.
    fewshot = parse_fewshot(name, "first_baseline")
    base_name = fewshot[0] if fewshot else name
    if not (
        base_name == BASE_BASELINE
        or (fewshot is None and VERSION_ID_RE.match(name))
        or session.get(BaseModelRow, base_name) is not None
    ):
        raise ValidationError(
            f"first_baseline {name!r} is not {BASE_BASELINE!r}, a version id (name@vN), "
            f"a registered base model, or one of those bases prompted with examples "
            f"({BASE_BASELINE}+fewshot:K)",
            param="first_baseline",
        )


def protect_alias(
    session: Session,
    adapter_name: str,
    alias: str,
    policy_name: str,
    policy_version: int | None = None,
    *,
    first_baseline: str = BASE_BASELINE,
    actor: str,
    reason: str = "",
) -> ProtectedAliasRow:
    """Protect ``adapter_name:alias`` with one policy version (None: the latest now); protecting
    an already protected alias replaces its policy. Recorded in ``protection_events``.

    ``first_baseline`` may name several baselines, comma-separated: a first release must then pass
    against each (``base,base+fewshot:4``: beat the better of zero-shot and few-shot base)."""
    check_adapter_name(adapter_name, "adapter")
    check_alias(alias)
    listed = first_baselines(first_baseline)
    if not listed or len(set(listed)) != len(listed):
        raise ValidationError(
            f"first_baseline {first_baseline!r}: name one baseline, or several different ones "
            "separated by commas",
            param="first_baseline",
        )
    for name in listed:
        _check_first_baseline(session, name)
    first_baseline = ",".join(listed)
    policy = get_policy(session, policy_name, policy_version)
    # Serialise with a concurrent move of this alias (which reads the protection under this lock).
    lock_alias(session, adapter_name, alias)
    row = get_protection(session, adapter_name, alias)
    if row is None:
        row = ProtectedAliasRow(adapter_name=adapter_name, alias=alias)
        session.add(row)
    row.policy_name = policy.name
    row.policy_version = policy.version
    row.policy_sha256 = policy.sha256
    row.first_baseline = first_baseline
    row.actor = actor
    _record(session, row, "protect", actor=actor, reason=reason)
    session.flush()
    event(
        log,
        "alias.protected",
        logging.INFO,
        alias=f"{adapter_name}:{alias}",
        policy=f"{policy.name}@{policy.version}",
        actor=actor,
    )
    return row


def unprotect_alias(
    session: Session, adapter_name: str, alias: str, *, actor: str, reason: str
) -> ProtectedAliasRow:
    """Lift the protection (returns what it was). A reason is required: it is the audit trail."""
    check_adapter_name(adapter_name, "adapter")
    check_alias(alias)
    if not reason.strip():
        raise ValidationError("unprotecting an alias needs a reason", param="reason")
    lock_alias(session, adapter_name, alias)
    row = get_protection(session, adapter_name, alias)
    if row is None:
        raise NotFoundError(f"alias {adapter_name}:{alias} is not protected", param="alias")
    _record(session, row, "unprotect", actor=actor, reason=reason)
    session.delete(row)
    session.flush()
    event(
        log,
        "alias.unprotected",
        logging.WARNING,
        alias=f"{adapter_name}:{alias}",
        actor=actor,
        reason=reason,
    )
    return row


def protection_history(session: Session, adapter_name: str, alias: str) -> list[ProtectionEventRow]:
    return list(
        session.scalars(
            select(ProtectionEventRow)
            .where(
                ProtectionEventRow.adapter_name == adapter_name, ProtectionEventRow.alias == alias
            )
            .order_by(ProtectionEventRow.id.desc())
        )
    )


def _record(
    session: Session, row: ProtectedAliasRow, action: str, *, actor: str, reason: str
) -> None:
    session.add(
        ProtectionEventRow(
            adapter_name=row.adapter_name,
            alias=row.alias,
            action=action,
            policy_name=row.policy_name,
            policy_version=row.policy_version,
            policy_sha256=row.policy_sha256,
            first_baseline=row.first_baseline,
            actor=actor,
            reason=reason,
        )
    )
