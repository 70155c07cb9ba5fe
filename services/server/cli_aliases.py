"""``loraplex adapters alias ...``, ``adapters protect`` and ``adapters unprotect``: move, roll
back, protect and audit aliases straight in the registry, whose move rules apply as they do to the
admin API. ``cli.py`` mounts them on ``loraplex adapters``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from shared.errors import LoraplexError
from shared.settings import load_settings

alias_app = typer.Typer(
    help="Move, roll back and audit aliases, straight in the registry (its move rules apply).",
    no_args_is_help=True,
)

AliasRef = Annotated[str, typer.Argument(help="NAME:ALIAS, e.g. support-bot:prod.")]
Actor = Annotated[
    str | None, typer.Option(help="Who is acting, for the history (default: cli:$USER).")
]


def _settings(**overrides: Any) -> Any:
    from services.server.config import ServerSettings

    return load_settings(ServerSettings, **{k: v for k, v in overrides.items() if v is not None})


def _split_alias(ref: str) -> tuple[str, str]:
    name, sep, alias = ref.partition(":")
    if not sep or not name or not alias:
        typer.secho(f"error: {ref!r} is not NAME:ALIAS", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return name, alias


def _actor(actor: str | None) -> str:
    import getpass

    return actor or f"cli:{getpass.getuser()}"


def _in_registry(action: Any) -> Any:
    """Run ``action(session)`` in one registry transaction; a refusal prints and exits 3."""
    from shared.registry.db import open_registry

    registry = open_registry(_settings())
    try:
        with registry.session() as session:
            return action(session)
    except LoraplexError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(3) from exc
    finally:
        registry.dispose()


@alias_app.command("set")
def alias_set(
    ref: AliasRef,
    version: Annotated[str, typer.Argument(help="Version id (name@vN) to point the alias at.")],
    expected: Annotated[
        str | None,
        typer.Option(help="Compare-and-set: the version the alias holds now ('' : none yet)."),
    ] = None,
    evaluation: Annotated[
        str | None,
        typer.Option(
            "--evaluation",
            help="Evidence for a protected alias: id of a passing evaluation of this move.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Override a protection (needs --reason; recorded).")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why; recorded in the alias history.")] = "",
    actor: Actor = None,
) -> None:
    """Point NAME:ALIAS at VERSION (same base model, servable; evidence if protected)."""
    from shared.registry import adapters as reg

    name, alias = _split_alias(ref)
    kwargs: dict[str, Any] = {}
    if expected is not None:
        kwargs["expected"] = expected or None

    def move(session: Any) -> tuple[str | None, bool]:
        current = reg.get_alias(session, name, alias)
        reg.set_alias(
            session,
            name,
            alias,
            version,
            evaluation_run_id=evaluation,
            force=force,
            reason=reason,
            actor=_actor(actor),
            **kwargs,
        )
        return (current.version_id if current else None), reg.alias_history(session, name, alias)[
            0
        ].forced

    previous, forced = _in_registry(move)
    typer.echo(f"{ref}: {previous or '(new)'} -> {version}" + (" [forced]" if forced else ""))


@alias_app.command("rollback")
def alias_rollback(
    ref: AliasRef,
    reason: Annotated[
        str, typer.Option(help="Why; required on a protected alias (recorded as forced).")
    ] = "",
    actor: Actor = None,
) -> None:
    """Move NAME:ALIAS back to the version it held before its last move."""
    from shared.registry import adapters as reg

    name, alias = _split_alias(ref)

    def rollback(session: Any) -> tuple[str, bool]:
        row = reg.rollback_alias(session, name, alias, actor=_actor(actor), reason=reason)
        return row.version_id, reg.alias_history(session, name, alias)[0].forced

    version, forced = _in_registry(rollback)
    typer.echo(f"{ref} -> {version}" + (" [forced]" if forced else ""))


@alias_app.command("history")
def alias_history_cmd(
    ref: AliasRef,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The alias's protection and its moves, newest first (who, why, evidence, forced)."""
    from shared.registry import adapters as reg
    from shared.registry import policies

    name, alias = _split_alias(ref)

    def read(session: Any) -> dict[str, Any]:
        protection = policies.get_protection(session, name, alias)
        return {
            "alias": ref,
            "protection": None
            if protection is None
            else {
                "policy": f"{protection.policy_name}@{protection.policy_version}",
                "policy_sha256": protection.policy_sha256,
                "first_baseline": protection.first_baseline,
                "actor": protection.actor,
            },
            "events": [
                {
                    "at": e.created_at.isoformat(),
                    "from": e.from_version,
                    "to": e.to_version,
                    "actor": e.actor,
                    "reason": e.reason,
                    "evaluation_run_id": e.evaluation_run_id,
                    "forced": e.forced,
                }
                for e in reg.alias_history(session, name, alias)
            ],
        }

    out = _in_registry(read)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    p = out["protection"]
    typer.echo(
        f"{ref}: protected by {p['policy']} (sha256 {p['policy_sha256'][:12]})"
        if p
        else f"{ref}: not protected"
    )
    for e in out["events"]:
        flag = " [forced]" if e["forced"] else ""
        evidence = f" evidence={e['evaluation_run_id']}" if e["evaluation_run_id"] else ""
        typer.echo(
            f"{e['at']}  {e['from'] or '(new)'} -> {e['to']}{flag}  by {e['actor'] or '?'}"
            f"{evidence}  {e['reason']}".rstrip()
        )


def protect_cmd(
    ref: AliasRef,
    policy: Annotated[
        str, typer.Option(help="Registered gate policy: NAME (latest) or NAME@VERSION.")
    ],
    first_baseline: Annotated[
        str,
        typer.Option(
            help="What a first release must beat ('base': base model); comma-separated for a "
            "pass against each, e.g. base,base+fewshot:4."
        ),
    ] = "base",
    reason: Annotated[str, typer.Option(help="Why; recorded.")] = "",
    actor: Actor = None,
) -> None:
    """Protect NAME:ALIAS: it then moves only on a passing evaluation under that policy version."""
    from shared.registry import policies

    name, alias = _split_alias(ref)

    def protect(session: Any) -> str:
        policy_name, version = policies.parse_policy_ref(policy)
        row = policies.protect_alias(
            session,
            name,
            alias,
            policy_name,
            version,
            first_baseline=first_baseline,
            actor=_actor(actor),
            reason=reason,
        )
        return f"{row.policy_name}@{row.policy_version} (sha256 {row.policy_sha256[:12]})"

    typer.echo(f"{ref}: protected by {_in_registry(protect)}")


def unprotect_cmd(
    ref: AliasRef,
    reason: Annotated[str, typer.Option(help="Why (required; recorded).")],
    actor: Actor = None,
) -> None:
    """Lift NAME:ALIAS's protection; the reason is recorded."""
    from shared.registry import policies

    name, alias = _split_alias(ref)

    def unprotect(session: Any) -> None:
        policies.unprotect_alias(session, name, alias, actor=_actor(actor), reason=reason)

    _in_registry(unprotect)
    typer.echo(f"{ref}: no longer protected")
