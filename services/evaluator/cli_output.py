"""What ``eval run`` and ``gate run`` show on the terminal: progress while running, then the result.

Imported by the CLI only when a run starts, so ``loraplex --help`` stays quick.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import typer

from services.evaluator import report
from services.evaluator.stages import Tracker, stages


def tracker_factory(quiet: bool) -> Any:
    """Progress for ``run_now``: a rich bar on a terminal, one line per stage otherwise."""

    def make(plan: Any) -> Tracker:
        if quiet or not sys.stderr.isatty():
            last = {"label": ""}

            def plain(fraction: float, label: str) -> None:
                if label != last["label"]:
                    last["label"] = label
                    typer.echo(f"[{100 * fraction:5.1f}%] {label}", err=True)

            return Tracker(stages(plan), plain)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TimeElapsedColumn(),
            transient=False,
        )
        task_id = bar.add_task("starting", total=1.0)
        bar.start()

        def update(fraction: float, label: str) -> None:
            bar.update(task_id, completed=fraction, description=label)
            if fraction >= 1.0:
                bar.stop()

        return Tracker(stages(plan), update)

    return make


def print_outcome(outcome: Any, as_json: bool, out: Path | None) -> None:
    """The run's metrics, gate reasons and promotion, or its result JSON; copies to ``out``."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for path in outcome.paths.values():
            shutil.copy(path, out / path.name)
    if as_json:
        typer.echo(
            json.dumps(report.result_json(outcome.result, outcome.gate), indent=1, default=str)
        )
        return
    res = outcome.result
    typer.echo(
        f"run {outcome.run_id}: {res.candidate.model} vs "
        f"{res.baseline.model if res.baseline else 'no baseline'} "
        f"({res.data.get('n_used')} items)"
    )
    for name, m in res.candidate.metrics.items():
        b = res.baseline.metrics.get(name) if res.baseline else None
        value = f"{m.value:.4g}" if m.ok else f"error: {m.error}"
        base = f"{b.value:.4g}" if b is not None and b.ok else "-"
        typer.echo(f"  {name:<26} {value:>12}   baseline {base:>10}")
    found = res.contamination.overlaps if res.contamination is not None else []
    if found:
        shown = ", ".join(f"{o.item_id} ({o.kind}, {o.training_location})" for o in found[:5])
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        typer.echo(f"contamination: {len(found)} items found in the training data: {shown}{more}")
    if outcome.gate is not None:
        colour = {"pass": typer.colors.GREEN, "fail": typer.colors.RED}.get(
            outcome.gate.decision, typer.colors.YELLOW
        )
        typer.secho(f"gate: {outcome.gate.decision.upper()}", fg=colour, bold=True)
        for reason in outcome.gate.reasons:
            typer.echo(f"  {reason}")
    if outcome.promotion is not None:
        typer.echo(f"promotion: {json.dumps(outcome.promotion)}")
    typer.echo(f"report: {outcome.paths['html']}")
