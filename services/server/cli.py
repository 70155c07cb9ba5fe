"""``loraplex serve`` and ``loraplex adapters``: run the server; import, export and list adapters;
move, roll back, protect and audit aliases.

Heavy imports (uvicorn, torch, peft) stay inside the commands so ``loraplex --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.errors import LoraplexError
from shared.settings import load_settings

serve_app = typer.Typer(help="Serve adapters behind an OpenAI-compatible API.")
adapters_app = typer.Typer(
    help="Adapters: import, export (merged), list; aliases and their protection.",
    no_args_is_help=True,
)
alias_app = typer.Typer(
    help="Move, roll back and audit aliases, straight in the registry (its move rules apply).",
    no_args_is_help=True,
)
adapters_app.add_typer(alias_app, name="alias")
app = serve_app  # the service's CLI, by the project's convention

AliasRef = Annotated[str, typer.Argument(help="NAME:ALIAS, e.g. support-bot:prod.")]
Actor = Annotated[
    str | None, typer.Option(help="Who is acting, for the history (default: cli:$USER).")
]


def _settings(**overrides: Any) -> Any:
    from services.server.config import ServerSettings

    return load_settings(ServerSettings, **{k: v for k, v in overrides.items() if v is not None})


@serve_app.callback(invoke_without_command=True)
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (LORAPLEX_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (LORAPLEX_PORT).")] = None,
    engines: Annotated[
        int | None, typer.Option(help="Engines to start (LORAPLEX_ENGINE_COUNT).")
    ] = None,
    attach: Annotated[
        list[str] | None,
        typer.Option(help="Attach to a running vLLM engine URL instead (repeatable)."),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="Log level.")] = None,
) -> None:
    """Start the engines (or attach to them) and serve /v1, /admin, /metrics, /health, /ready."""

    import uvicorn

    from services.server.api.app import create_app

    settings = _settings(
        host=host,
        port=port,
        engine_count=engines,
        engine_urls=attach or None,
        log_level=log_level,
    )
    from services.server.auth import keyring
    from shared.auth import check_bind
    from shared.logs import configure

    configure("server", settings.log_level)
    check_bind("server", settings.host, keyring(settings))
    uvicorn.run(create_app(settings), **uvicorn_options(settings))


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """How uvicorn runs the server: uvloop and httptools (C) on the hot path, no access log."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "log_config": None,  # keep shared.logs' handler: one format for every line
        "loop": "uvloop",
        "http": "httptools",
        "server_header": False,
        "proxy_headers": False,  # nothing reads the client address; one ASGI layer fewer
        "timeout_graceful_shutdown": 30,
    }


@adapters_app.command("import")
def import_cmd(
    folder: Annotated[Path, typer.Argument(help="PEFT LoRA folder (adapter_config.json, ...).")],
    name: Annotated[str, typer.Option(help="Adapter name to register it under.")],
    declared_base_ok: Annotated[
        bool,
        typer.Option(
            "--declared-base-is-this-base",
            help="The base the adapter declares (base_model_name_or_path) is the served one under "
            "another name; needs --reason, recorded in the version's lineage.",
        ),
    ] = False,
    reason: Annotated[str, typer.Option(help="Why; recorded with the statement.")] = "",
    actor: Actor = None,
) -> None:
    """Validate a LoRA adapter trained elsewhere and register it as the next version of NAME."""
    from services.server.declared_base import BaseStatement
    from services.server.importer import import_folder

    statement = BaseStatement(_actor(actor), reason) if declared_base_ok else None
    try:
        info, created = import_folder(_settings(), folder, name, statement=statement)
    except LoraplexError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(3) from exc
    state = "registered" if created else "already registered as"
    typer.echo(f"{state} {info.id}  sha256 {info.sha256[:16]}  rank {info.rank}")
    declared = info.manifest.get("declared_base") or {}
    if declared.get("accepted_as") == "stated":
        typer.echo(f"declared base {declared['declared']!r} recorded as {declared['served']!r}")


@adapters_app.command("export")
def export_cmd(
    model: Annotated[str, typer.Argument(help="Version id (name@vN) or alias (name:alias).")],
    merged: Annotated[
        Path, typer.Option("--merged", help="Write base + adapter merged into this folder.")
    ],
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="Write one GGUF file, DIR/model-TYPE.gguf (q8_0 or q4_0), with its lineage "
            "next to it, instead of a transformers folder."
        ),
    ] = None,
) -> None:
    """Write the base model with the adapter merged in, loadable without LoRA support."""
    from services.server.gguf_export import check_quant_type, export_gguf
    from services.server.importer import export_merged
    from shared.artifacts import open_store
    from shared.registry.db import open_registry

    if quantize is not None:
        try:
            quantize = check_quant_type(quantize)
        except LoraplexError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
    settings = _settings()
    registry = open_registry(settings)
    try:
        store = open_store(settings)
        if quantize is not None:
            out = export_gguf(settings, registry, store, model, merged, quantize, force=force)
        else:
            out = export_merged(settings, registry, store, model, merged, force=force)
    except LoraplexError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(3) from exc
    finally:
        registry.dispose()
    typer.echo(f"wrote {out}")


@adapters_app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Registered adapter versions with their aliases and pins."""
    from shared.registry import adapters as reg
    from shared.registry.db import open_registry

    registry = open_registry(_settings())
    try:
        with registry.session() as session:
            pins = set(reg.list_pins(session))
            aliases: dict[str, list[str]] = {}
            for alias in reg.list_aliases(session):
                aliases.setdefault(alias.version_id, []).append(
                    f"{alias.adapter_name}:{alias.alias}"
                )
            rows: list[dict[str, Any]] = [
                {
                    "id": v.id,
                    "rank": v.rank,
                    "base_model": v.base_model,
                    "sha256": v.sha256,
                    "aliases": aliases.get(v.id, []),
                    "pinned": v.id in pins,
                }
                for v in reg.list_versions(session)
            ]
    finally:
        registry.dispose()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        extra = " ".join(row["aliases"]) + (" [pinned]" if row["pinned"] else "")
        typer.echo(f"{row['id']:40} r={row['rank']:<4} {row['sha256'][:12]}  {extra}".rstrip())


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


@adapters_app.command("protect")
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


@adapters_app.command("unprotect")
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
