"""Shared by the training benchmarks: our SFT recipe run in this process, timed like TRL times it,
and each side of a comparison run in a fresh interpreter (``run_child`` / ``emit_result``).

The recipe runs exactly as the worker runs it (same ``RecipeContext``, registration into the
registry); ``trainer.train()`` is wrapped so the figures are TRL's own (``train_runtime``,
``num_tokens``), comparable with a plain TRL script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_RESULT = "RESULT "

# (message, type, data) of each event the recipe reports.
OnEvent = Callable[[str, str, dict[str, Any]], None]


@dataclass
class RecipeRun:
    manifest: dict[str, Any]  # what the recipe registered (config decisions, trained tokens, ...)
    train_seconds: float  # TRL's train_runtime
    train_cpu_seconds: float  # this process's CPU time inside trainer.train()
    tokens: int  # TRL's num_tokens: non-padding input tokens
    losses: list[float]  # the logged training losses, in order


def run_sft_in_process(
    settings: Any,
    spec: Any,
    train: Path,
    *,
    name: str,
    work: Path,
    on_event: OnEvent | None = None,
    after_train: Callable[[], None] | None = None,
) -> RecipeRun:
    """Train ``spec`` (a ``JobSpec``) on ``train`` with ``settings`` (``TrainerSettings``) and
    register the adapter as ``name``. ``after_train`` runs right after ``trainer.train()`` returns
    (e.g. ``torch.cuda.synchronize``)."""
    import transformers

    from services.trainer.adapters import store_and_register
    from services.trainer.files import DataFile
    from services.trainer.recipes.context import RecipeContext
    from services.trainer.recipes.sft import run_sft

    class Reporter:
        def event(
            self, message: str, *, level: str = "info", type: str = "message", data: Any = None
        ) -> None:
            if on_event is not None:
                on_event(message, type, data or {})

        def should_stop(self) -> str | None:
            return None

        def phase(self, status: str) -> None:
            pass

    captured: dict[str, Any] = {}

    def register(folder: Path, manifest: dict[str, Any], base: Any) -> str:
        captured["manifest"] = manifest
        return store_and_register(settings, folder, manifest, base, name)

    ctx = RecipeContext(
        spec=spec,
        settings=settings,
        train_file=DataFile(train, train.name),
        validation_file=None,
        output_dir=work / "out",
        reporter=Reporter(),
        register=register,
        adapter_name=name,
    )
    original = transformers.Trainer.train

    def timed_train(self: Any, *a: Any, **kw: Any) -> Any:
        cpu = time.process_time()
        out = original(self, *a, **kw)
        if after_train is not None:
            after_train()
        captured["cpu"] = time.process_time() - cpu
        captured["seconds"] = out.metrics["train_runtime"]
        captured["history"] = list(self.state.log_history)
        return out

    transformers.Trainer.train = timed_train  # type: ignore[method-assign]
    try:
        run_sft(ctx)
    finally:
        transformers.Trainer.train = original  # type: ignore[method-assign]
    history = captured["history"]
    return RecipeRun(
        manifest=captured["manifest"],
        train_seconds=captured["seconds"],
        train_cpu_seconds=captured["cpu"],
        tokens=max(h.get("num_tokens", 0) for h in history),
        losses=[h["loss"] for h in history if "loss" in h],
    )


def emit_result(result: dict[str, Any]) -> None:
    """The child's side of :func:`run_child`: print the result on its own line."""
    print(_RESULT + json.dumps(result), flush=True)


def run_child(script: str, args: list[str], label: str) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh interpreter (so each side starts from the same
    clean state) and return what it passed to :func:`emit_result`."""
    cmd = [sys.executable, script, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT):
            return dict(json.loads(line[len(_RESULT) :]))
    raise RuntimeError(f"{label} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def prepared_data_dir(cache: Path, prefix: str = "bench-") -> Path:
    """A fresh data dir (its own registry) with the embedded model linked in from ``cache``,
    prepared there once."""
    from shared.basemodel import prepare_embedded_model
    from shared.settings import SharedSettings

    cache.mkdir(parents=True, exist_ok=True)
    model = prepare_embedded_model(SharedSettings(data_dir=cache)).path
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    target = data_dir / "models" / model.name
    target.mkdir(parents=True)
    for item in model.iterdir():
        if item.is_file():
            os.link(item, target / item.name)
        else:
            shutil.copytree(item, target / item.name)
    return data_dir
