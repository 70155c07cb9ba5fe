"""``loraplex serve`` and ``loraplex adapters``: run the server; import, export and list adapters.
The alias commands (move, roll back, protect, audit) are in ``cli_aliases``.

Heavy imports (uvicorn, torch, peft) stay inside the commands so ``loraplex --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from services.server.cli_aliases import (
    Actor,
    _actor,
    _settings,
    alias_app,
    protect_cmd,
    unprotect_cmd,
)
from services.server.full_manifests import engine_manifest_cmd
from shared.errors import LoraplexError

serve_app = typer.Typer(help="Serve adapters behind an OpenAI-compatible API.")
adapters_app = typer.Typer(
    help="Adapters: import, export (merged), list; aliases and their protection.",
    no_args_is_help=True,
)
adapters_app.add_typer(alias_app, name="alias")
app = serve_app  # the service's CLI, by the project's convention


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
        Path,
        typer.Option(
            "--merged",
            help="Write base + adapter merged into this folder (a full fine-tune: its own "
            "folder, copied).",
        ),
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
    """Write the base model with the adapter merged in, loadable without LoRA support; a full
    fine-tune is written as it is stored."""
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
    from shared.registry.versions import version_kind

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
                    "kind": version_kind(v.manifest or {}),
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
        typer.echo(
            f"{row['id']:40} {row['kind']:<4} r={row['rank']:<4} {row['sha256'][:12]}  "
            f"{extra}".rstrip()
        )


# After the commands above, so `loraplex adapters --help` lists them in their old order.
adapters_app.command("protect")(protect_cmd)
adapters_app.command("unprotect")(unprotect_cmd)
adapters_app.command("engine-manifest")(engine_manifest_cmd)
