"""Step 2 of a recipe, the data: load, clean, split, render and validate (a blocking phase that
fails on bad data), and the sequence lengths the decisions need."""

from __future__ import annotations

from services.trainer.recipes.context import EventKind, RecipeContext
from services.trainer.schemas import ResolvedHyperparameters
from services.trainer.statuses import JobStatus
from shared.datasets import ChatRenderer, PreparedData, load_examples, prepare


def prepare_data(
    ctx: RecipeContext, renderer: ChatRenderer, kind: str, hp: ResolvedHyperparameters
) -> PreparedData:
    """Load, clean, split, render and validate; a blocking phase that fails on bad data."""
    keep_markup = ctx.spec.data.keep_markup
    train = load_examples(ctx.train_file.path, source=ctx.train_file.name, keep_markup=keep_markup)
    validation = (
        load_examples(
            ctx.validation_file.path, source=ctx.validation_file.name, keep_markup=keep_markup
        )
        if ctx.validation_file
        else None
    )
    data = prepare(
        train,
        validation,
        renderer,
        kind=kind,
        max_length=hp.max_length,
        seed=hp.seed,
        validation_fraction=ctx.spec.data.validation_fraction,
        truncation=ctx.spec.data.truncation,
        near_duplicate_threshold=ctx.spec.data.near_duplicate_threshold,
        pii=ctx.spec.data.pii,
        pii_kinds=ctx.spec.data.pii_kinds,
    )
    report = data.report
    section = report["train"]
    ctx.reporter.event(
        f"validated {section['examples']} training and {report['validation']['examples']} "
        f"validation examples ({len(report['errors'])} errors, {len(report['warnings'])} warnings)",
        level="error" if report["errors"] else "info",
        type=EventKind.VALIDATION,
        data=report,
    )
    for warning in report["warnings"]:
        ctx.reporter.event(warning, level="warn")
    data.raise_for_errors()
    ctx.reporter.phase(JobStatus.RUNNING)
    return data


def mean_sequence(data: PreparedData) -> float:
    lengths = [r.n_tokens for r in data.train_rendered] + [p.n_tokens for p in data.train_pairs]
    lengths += data.train_prompt_tokens
    return sum(lengths) / max(1, len(lengths))


def longest_sequence(data: PreparedData) -> int:
    lengths = [r.n_tokens for r in data.train_rendered] + [p.n_tokens for p in data.train_pairs]
    lengths += data.train_prompt_tokens
    return max(lengths, default=1)
