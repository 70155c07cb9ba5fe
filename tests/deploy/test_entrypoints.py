"""Every command the images run in the manifests (and in the training Jobs) is a real
`loraplex` CLI command, with the right number of arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.server import full_manifests
from services.server.config import ServerSettings
from services.trainer import k8s_jobs
from tests.deploy.manifests import OVERLAYS, containers, is_loraplex, rendered

# The commands deploy/ relies on; ARG stands for a positional argument.
COMMANDS = [
    ("serve",),
    ("train", "api"),
    ("train", "worker"),
    ("train", "run-job", "ARG"),
    ("eval", "api"),
    ("eval", "worker"),
    ("model", "prepare"),
    ("model", "register", "ARG"),
    ("adapters", "export", "ARG"),
]


def _shape(args: list[str]) -> tuple[str, ...]:
    """The command words of ``args`` with positional values replaced by ARG (options, from the
    first ``--``, left out)."""
    args = args[: next((i for i, a in enumerate(args) if a.startswith("--")), len(args))]
    for command in COMMANDS:
        words = [w for w in command if w != "ARG"]
        if args[: len(words)] == words and len(args) == len(command):
            return command
    return tuple(args)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl missing")
def test_manifests_use_only_the_listed_commands() -> None:
    used = set()
    for overlay in OVERLAYS:
        for _doc, c, _init in containers(rendered(overlay)):
            if is_loraplex(c):
                used.add(_shape(c["args"]))
    job = k8s_jobs.job_manifest(
        "ftjob-1", k8s_jobs.KubernetesJobSettings(image="x:1.0"), namespace="ns"
    )
    used.add(_shape(job["spec"]["template"]["spec"]["containers"][0]["args"]))
    engine = full_manifests.full_engine_manifests("m@v1", ServerSettings(), image="x:1.0")
    for _doc, c, _init in containers(engine):
        if not c.get("command"):  # the engine runs vLLM, not a loraplex command
            used.add(_shape(c["args"]))
    assert used <= set(COMMANDS), used - set(COMMANDS)
    assert used == set(COMMANDS), f"listed but unused: {set(COMMANDS) - used}"


def _loraplex_exe() -> str | None:
    beside = Path(sys.executable).with_name("loraplex")
    return str(beside) if beside.exists() else shutil.which("loraplex")


def test_loraplex_help_lists_the_groups() -> None:
    exe = _loraplex_exe()
    if exe is None:
        pytest.skip("the loraplex console script is not installed (pip install -e .)")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    for group in sorted({c[0] for c in COMMANDS}):
        assert f" {group} " in done.stdout, f"`loraplex --help` does not list {group}"


def _cli() -> Any:
    try:
        import typer.main

        from services.cli import app
    except ImportError as exc:
        pytest.skip(f"the loraplex CLI cannot be imported: {exc}")
    return typer.main.get_command(app)


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_command_exists(command: tuple[str, ...]) -> None:
    node = _cli()
    words = [w for w in command if w != "ARG"]
    for depth, word in enumerate(words):
        subcommands = getattr(node, "commands", None)
        if subcommands is None or word not in subcommands:
            help_text = node.help or ""
            if "(unavailable:" in help_text:
                pytest.skip(f"loraplex {' '.join(words[:depth])}: {help_text.split('(', 1)[1]}")
            pytest.fail(f"`loraplex {' '.join(words[:depth])}` has no command {word!r}")
        node = subcommands[word]
    if getattr(node, "commands", None) is not None:
        # A group run without a subcommand (`loraplex serve`) must do something itself.
        help_text = node.help or ""
        if "(unavailable:" in help_text:
            pytest.skip(f"loraplex {' '.join(words)}: {help_text.split('(', 1)[1]}")
        assert node.invoke_without_command, f"`loraplex {' '.join(words)}` needs a subcommand"
    arguments = [p for p in node.params if p.param_type_name == "argument"]
    given = command.count("ARG")
    required = [p for p in arguments if p.required]
    assert len(required) <= given <= len(arguments), (
        f"`loraplex {' '.join(words)}` takes {len(required)}..{len(arguments)} arguments; "
        f"deploy/ passes {given}"
    )
