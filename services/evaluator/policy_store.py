"""Gate policies in the registry: register (parsed by the evaluator's own rules) and read."""

from __future__ import annotations

from typing import Any

from services.evaluator.access import policy_from_body
from services.evaluator.policy import parse_policy
from shared.registry import policies
from shared.registry.db import Registry


def register_policy(
    registry: Registry, name: str, spec: str | dict[str, Any], *, actor: str
) -> dict[str, Any]:
    """Parse (the evaluator's own rules), then store the body and ``Policy.sha256()``."""
    policy = (
        policy_from_body(spec, f"policy {name}")
        if isinstance(spec, dict)
        else parse_policy(spec, f"policy {name}")
    )
    with registry.session() as session:
        row = policies.register_policy(
            session, name, policy.model_dump(mode="json"), policy.sha256(), actor=actor
        )
        return policy_public(row)


def get_policy(registry: Registry, name: str, version: int | None = None) -> dict[str, Any]:
    policies.check_policy_name(name, "name")
    with registry.read_session() as session:
        return policy_public(policies.get_policy(session, name, version))


def policy_public(row: Any) -> dict[str, Any]:
    return {
        "object": "gate_policy",
        "name": row.name,
        "version": row.version,
        "sha256": row.sha256,
        "body": row.body,
        "actor": row.actor,
        "created_at": row.created_at,
    }
