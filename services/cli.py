"""``loraplex``: one command line, a thin shell that mounts each service's own CLI.

Service CLIs keep heavy imports (torch, vLLM) inside their commands so ``loraplex --help`` and the
registry commands stay fast.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from shared.errors import LoraplexError
from shared.logs import configure as configure_logging
from shared.settings import SharedSettings, load_settings
from shared.verdicts import ExitCode

app = typer.Typer(
    name="loraplex",
    help="Train, evaluate, gate and serve LoRA adapters on one base model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Base models: prepare the embedded model, list registered ones.")
app.add_typer(model_app, name="model")

# (module, attribute, group name, help) for each service CLI; each module owns its commands.
SERVICE_GROUPS = [
    (
        "services.trainer.cli",
        "app",
        "train",
        "Fine-tuning: run in-process, or submit to the service.",
    ),
    ("services.evaluator.cli", "eval_app", "eval", "Evaluate an adapter version, alias or base."),
    (
        "services.evaluator.cli",
        "gate_app",
        "gate",
        "Gate a candidate on a policy; promote on pass.",
    ),
    (
        "services.server.cli",
        "serve_app",
        "serve",
        "Serve adapters behind an OpenAI-compatible API.",
    ),
    ("services.server.cli", "adapters_app", "adapters", "Adapters: list, import, export, aliases."),
    ("services.release", "app", "release", "Train, evaluate, gate and promote in one command."),
]


def _mount_services() -> None:
    for module_name, attr, name, help_text in SERVICE_GROUPS:
        try:
            sub = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            missing = typer.Typer(help=f"{help_text} (unavailable: {exc})")

            @missing.callback(invoke_without_command=True)
            def _unavailable(reason: str = str(exc), group: str = name) -> None:
                typer.echo(f"loraplex {group} is not available: {reason}", err=True)
                raise typer.Exit(ExitCode.ERROR)

            app.add_typer(missing, name=name)
        else:
            if isinstance(sub, typer.Typer):
                app.add_typer(sub, name=name, help=help_text)


def settings() -> SharedSettings:
    return load_settings(SharedSettings)


@model_app.command("prepare")
def model_prepare(
    force: Annotated[bool, typer.Option(help="Rebuild even if a valid folder exists.")] = False,
) -> None:
    """Convert the embedded GGUF into a safetensors folder (once) and register it."""
    from shared.basemodel import prepare_embedded_model, register_base_model
    from shared.registry.db import open_registry

    cfg = settings()
    typer.echo("preparing the embedded base model (first run converts the GGUF, about a minute)")
    model = prepare_embedded_model(cfg, force=force)
    registry = open_registry(cfg)
    with registry.session() as session:
        register_base_model(session, model)
    typer.echo(f"{model.name}  {model.path}  weights sha256 {model.weights_sha256}")


@model_app.command("list")
def model_list() -> None:
    """List registered base models with their weights hash."""
    from sqlalchemy import select

    from shared.registry.db import open_registry
    from shared.registry.models import BaseModelRow

    registry = open_registry(settings())
    with registry.session() as session:
        for row in session.scalars(select(BaseModelRow).order_by(BaseModelRow.name)):
            typer.echo(f"{row.name}\t{row.weights_sha256[:16]}\t{row.source}\t{row.path}")


@model_app.command("register")
def model_register(
    path: Annotated[Path, typer.Argument(help="Local HF model folder (config.json + weights).")],
    name: Annotated[str | None, typer.Option(help="Registry name (default: folder name).")] = None,
) -> None:
    """Register a local HF-format model folder as a base model, by name and weights hash."""
    from dataclasses import replace

    from shared.basemodel import register_base_model, resolve_base_model
    from shared.registry.db import open_registry

    cfg = settings()
    model = resolve_base_model(cfg, str(path))
    if name:
        model = replace(model, name=name)
    with open_registry(cfg).session() as session:
        register_base_model(session, model)
    typer.echo(f"registered {model.name}  weights sha256 {model.weights_sha256}")


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Report Python, torch, vLLM, CPU, GPU, disk, and which training methods fit this machine."""
    from shared import doctor as doc

    cfg = settings()
    base_config = None
    try:
        from shared.basemodel import resolve_base_model

        folder = resolve_base_model(cfg).path
        base_config = json.loads((folder / "config.json").read_text())
    except LoraplexError as exc:
        typer.echo(f"(base model not available: {exc.message})", err=True)
    data = doc.report(cfg, base_config)
    typer.echo(doc.to_json(data) if as_json else doc.render(data))


@app.command("migrate")
def migrate_cmd() -> None:
    """Create or upgrade the registry schema (also done by every service at start-up)."""
    from shared.registry.db import open_registry

    cfg = settings()
    open_registry(cfg)
    typer.echo(f"registry at {cfg.database_url.split('@')[-1]} is at the newest schema")


def main() -> None:
    # Interactive commands print their own output; services raise their level in their entry.
    configure_logging("loraplex", os.environ.get("LORAPLEX_LOG_LEVEL") or "WARNING")
    try:
        app()
    except LoraplexError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(ExitCode.ERROR)


_mount_services()


if __name__ == "__main__":
    main()
