"""From loaded files to training-ready data plus the semantic validation report.

Cleaning happened when the files were loaded; what it changed in assistant targets (HTML
stripped, entities decoded, control characters, whitespace) is counted there and reported here,
with a warning when HTML was taken out of answers. Steps, in order: drop exact duplicates (and validation examples that duplicate training ones),
report near-duplicates, hold out a seeded validation split when none is given (near-duplicates
stay on one side, so the split does not leak), render with the model's template, apply the length
limit, and check what the loss will really see. Problems that would train a wrong adapter (an
assistant turn whose stop token is not trained, a template that cannot be masked) are errors that
name the example ids; the rest are counts and warnings. The report becomes job events and part of
the adapter's manifest.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.datasets.cleaning import clusters, find_near_duplicates
from shared.datasets.loading import LoadedFile
from shared.datasets.pii import PiiAction, pii_step
from shared.datasets.records import Example
from shared.datasets.render import IGNORE_INDEX, ChatRenderer, RenderedExample, RenderedPair
from shared.errors import ValidationError

Truncation = Literal["drop", "truncate"]
MAX_IDS = 20


@dataclass
class DedupResult:
    kept: list[Example]
    duplicates: list[tuple[str, str]]  # (dropped id, id it duplicates)


def drop_exact_duplicates(
    examples: list[Example], seen: dict[str, str] | None = None
) -> DedupResult:
    seen = dict(seen or {})
    kept, dups = [], []
    for e in examples:
        key = e.content_key()
        if key in seen:
            dups.append((e.id, seen[key]))
            continue
        seen[key] = e.id
        kept.append(e)
    return DedupResult(kept, dups)


def split_validation(
    examples: list[Example], fraction: float, seed: int, groups: list[int] | None = None
) -> tuple[list[Example], list[Example]]:
    """Seeded split; items of one group (near-duplicate cluster) land on the same side."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    groups = groups if groups is not None else list(range(len(examples)))
    order = sorted(set(groups))
    random.Random(seed).shuffle(order)
    want = max(1, round(len(examples) * fraction))
    chosen: set[int] = set()
    size = 0
    members: dict[int, int] = {}
    for g in groups:
        members[g] = members.get(g, 0) + 1
    for g in order:
        if size >= want:
            break
        if size + members[g] > want and size > 0:
            continue
        chosen.add(g)
        size += members[g]
    train = [e for e, g in zip(examples, groups, strict=True) if g not in chosen]
    val = [e for e, g in zip(examples, groups, strict=True) if g in chosen]
    if not train:  # one giant cluster: better no validation than no training data
        return examples, []
    return train, val


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "p50": 0, "p95": 0, "max": 0, "mean": 0}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 2),
    }


@dataclass
class PreparedData:
    kind: str
    train: list[Example]
    validation: list[Example]
    train_rendered: list[RenderedExample] = field(default_factory=list)
    validation_rendered: list[RenderedExample] = field(default_factory=list)
    train_pairs: list[RenderedPair] = field(default_factory=list)
    validation_pairs: list[RenderedPair] = field(default_factory=list)
    # Prompt data (reinforcement): the kept prompts' token counts, with the generation prompt.
    train_prompt_tokens: list[int] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        return list(self.report.get("errors", []))

    def raise_for_errors(self) -> None:
        errors = self.errors
        if errors:
            raise ValidationError(
                f"the data failed semantic validation: {errors[0]}",
                param="training_file",
                code="invalid_training_data",
                details=errors,
            )


def _apply_length(
    rendered: RenderedExample, max_length: int, truncation: Truncation
) -> tuple[RenderedExample | None, str | None]:
    """(example, None) when kept; (None, reason) when dropped."""
    if rendered.n_tokens <= max_length:
        return rendered, None
    if truncation == "drop":
        return None, "longer than max_length"
    rendered.input_ids = rendered.input_ids[:max_length]
    rendered.labels = rendered.labels[:max_length]
    rendered.truncated = True
    if rendered.n_trained == 0:
        return None, "no trained tokens left after truncation"
    return rendered, None


def _sft_split(
    examples: list[Example],
    renderer: ChatRenderer,
    max_length: int,
    truncation: Truncation,
    errors: list[str],
) -> tuple[list[RenderedExample], dict[str, Any]]:
    kept: list[RenderedExample] = []
    truncated, cut_stop, dropped = [], [], []
    no_stop: list[str] = []
    fractions: list[float] = []
    full_lengths: list[int] = []
    for example in examples:
        rendered = renderer.render_sft(example)
        full_lengths.append(rendered.n_tokens)
        for problem in rendered.problems:
            errors.append(f"{example.location}: {problem}")
        if rendered.problems:
            continue
        if any(t.trained and not t.has_stop for t in rendered.turns):
            no_stop.append(example.id)
            continue
        result, reason = _apply_length(rendered, max_length, truncation)
        if result is None:
            dropped.append({"id": example.id, "reason": reason, "tokens": rendered.n_tokens})
            continue
        if result.truncated:
            truncated.append(example.id)
            last = result.labels[-1]
            if last != IGNORE_INDEX and last not in renderer.stop_ids:
                cut_stop.append(example.id)
        fractions.append(result.n_trained / max(1, result.n_tokens))
        kept.append(result)
    if no_stop:
        errors.append(
            f"{len(no_stop)} example(s) have an assistant turn that does not end with a trained "
            f"stop token {renderer.stop_tokens}: {', '.join(no_stop[:MAX_IDS])}"
        )
    summary = {
        "examples": len(kept),
        "tokens": sum(r.n_tokens for r in kept),
        "trained_tokens": sum(r.n_trained for r in kept),
        "length": _stats(full_lengths),
        "trained_fraction": {
            "min": round(min(fractions), 4) if fractions else 0.0,
            "mean": round(statistics.fmean(fractions), 4) if fractions else 0.0,
            "max": round(max(fractions), 4) if fractions else 0.0,
        },
        "truncated": {"count": len(truncated), "ids": truncated[:MAX_IDS]},
        "truncated_mid_answer": {"count": len(cut_stop), "ids": cut_stop[:MAX_IDS]},
        "dropped": {"count": len(dropped), "examples": dropped[:MAX_IDS]},
        "assistant_turns_without_trained_stop": no_stop[:MAX_IDS],
    }
    return kept, summary


def _pair_split(
    examples: list[Example],
    renderer: ChatRenderer,
    max_length: int,
    errors: list[str],
) -> tuple[list[RenderedPair], dict[str, Any]]:
    kept: list[RenderedPair] = []
    dropped, truncated = [], []
    lengths, skew = [], []
    for example in examples:
        pair = renderer.render_pair(example)
        for problem in pair.problems:
            errors.append(f"{example.location}: {problem}")
        if pair.problems:
            continue
        lengths.append(pair.n_tokens)
        if len(pair.prompt_ids) >= max_length:
            dropped.append({"id": example.id, "reason": "prompt fills max_length"})
            continue
        if pair.n_tokens > max_length:
            truncated.append(example.id)
        skew.append(len(pair.chosen_ids) - len(pair.rejected_ids))
        kept.append(pair)
    summary = {
        "examples": len(kept),
        "tokens": sum(p.n_tokens for p in kept),
        "length": _stats(lengths),
        "truncated": {"count": len(truncated), "ids": truncated[:MAX_IDS]},
        "dropped": {"count": len(dropped), "examples": dropped[:MAX_IDS]},
        # Chosen much longer than rejected (or the reverse) lets DPO learn length, not quality.
        "chosen_minus_rejected_tokens": {
            "mean": round(statistics.fmean(skew), 2) if skew else 0.0,
            "share_chosen_longer": round(sum(1 for s in skew if s > 0) / len(skew), 4)
            if skew
            else 0,
        },
    }
    return kept, summary


def _prompt_split(
    examples: list[Example], renderer: ChatRenderer, max_length: int, errors: list[str]
) -> tuple[list[Example], dict[str, Any], list[int]]:
    """Prompts that leave room for an answer within ``max_length`` (the others are dropped)."""
    kept: list[Example] = []
    lengths, kept_lengths, dropped = [], [], []
    for example in examples:
        problems = [f"{example.location}: {p}" for p in renderer.special_token_problems(example)]
        errors.extend(problems)
        if problems:
            continue
        n = len(renderer.ids(list(example.messages), add_generation_prompt=True))
        lengths.append(n)
        if n >= max_length:
            dropped.append({"id": example.id, "reason": "prompt fills max_length", "tokens": n})
            continue
        kept.append(example)
        kept_lengths.append(n)
    summary = {
        "examples": len(kept),
        "tokens": sum(kept_lengths),
        "length": _stats(lengths),
        "truncated": {"count": 0, "ids": []},
        "dropped": {"count": len(dropped), "examples": dropped[:MAX_IDS]},
    }
    return kept, summary, kept_lengths


def _markup_warning(name: str, counts: dict[str, Any]) -> list[str]:
    """A warning when cleaning took HTML out of assistant targets: right for scraped text, wrong
    for a task whose answers are HTML (the model would learn to drop its markup)."""
    by_kind = counts.get("by_kind", {})
    stripped = max(by_kind.get("html_markup", 0), by_kind.get("html_entities", 0))
    if not stripped or counts.get("keep_markup"):
        return []
    return [
        f"cleaning removed HTML tags or entities from {stripped} of "
        f"{counts.get('assistant_targets', 0)} assistant target(s) in {name}; if the task's "
        "output is HTML, set data.keep_markup: true"
    ]


def prepare(
    train_file: LoadedFile,
    validation_file: LoadedFile | None,
    renderer: ChatRenderer,
    *,
    kind: str,
    max_length: int = 1024,
    seed: int = 42,
    validation_fraction: float = 0.1,
    truncation: Truncation = "drop",
    near_duplicate_threshold: float = 0.85,
    pii: PiiAction | None = None,
    pii_kinds: Sequence[str] | None = None,
) -> PreparedData:
    """Run every data-preparation step and return the data with its report (does not raise).

    ``pii``: scan what will be trained on for PII (``shared.datasets.pii``) and report, redact or
    refuse it; None skips the scan. It runs after the split, so redacting never moves an example
    to the other side (the evaluator rebuilds the same split from the file as uploaded).
    """
    errors: list[str] = []
    warnings: list[str] = []
    for loaded, name in ((train_file, "training_file"), (validation_file, "validation_file")):
        if loaded is not None and loaded.kind not in (kind, "empty"):
            label = {"sft": "supervised (chat)", "prompt": "prompt"}.get(kind, "preference")
            errors.append(
                f"{name} {loaded.source} holds {loaded.kind} records, but this method needs "
                f"{label} records"
            )
    wanted = kind if kind in ("preference", "prompt") else "sft"
    dedup = drop_exact_duplicates([e for e in train_file.examples if e.kind == wanted])
    train = dedup.kept
    search = find_near_duplicates([e.text() for e in train], near_duplicate_threshold)
    near = search.pairs
    val_dups: list[tuple[str, str]] = []
    if validation_file is not None:
        seen = {e.content_key(): e.id for e in train}
        vdedup = drop_exact_duplicates(
            [e for e in validation_file.examples if e.kind == wanted], seen
        )
        validation = vdedup.kept
        val_dups = vdedup.duplicates
        split_source = "validation_file"
    else:
        train, validation = split_validation(
            train, validation_fraction, seed, clusters(len(train), near)
        )
        split_source = f"held out {validation_fraction:.0%} of training_file (seed {seed})"
    if not search.complete:
        warnings.append(
            "near-duplicate search stopped at its work limit; the count is a lower bound"
        )
    if near:
        warnings.append(
            f"{len(near)} near-duplicate pair(s) in the training file (kept; they stay on one "
            "side of the validation split)"
        )
    pii_section: dict[str, Any] | None = None
    if pii is not None:
        train, validation, pii_section = pii_step(
            train, validation, pii, pii_kinds, errors, warnings, max_ids=MAX_IDS
        )
    cleaning = {"training_file": train_file.cleaning}
    if validation_file is not None:
        cleaning["validation_file"] = validation_file.cleaning
    for name, counts in cleaning.items():
        warnings.extend(_markup_warning(name, counts))
    data = PreparedData(kind=kind, train=train, validation=validation)
    if kind == "sft":
        data.train_rendered, train_summary = _sft_split(
            train, renderer, max_length, truncation, errors
        )
        data.validation_rendered, val_summary = _sft_split(
            validation, renderer, max_length, truncation, errors
        )
    elif kind == "prompt":
        data.train, train_summary, data.train_prompt_tokens = _prompt_split(
            train, renderer, max_length, errors
        )
        data.validation, val_summary, _ = _prompt_split(validation, renderer, max_length, errors)
    else:
        data.train_pairs, train_summary = _pair_split(train, renderer, max_length, errors)
        data.validation_pairs, val_summary = _pair_split(validation, renderer, max_length, errors)
    if train_summary["examples"] == 0 and not errors:
        errors.append("no training examples are left after validation, de-duplication and length")
    if train_summary["truncated"]["count"]:
        warnings.append(f"{train_summary['truncated']['count']} training example(s) truncated")
    if train_summary["dropped"]["count"]:
        warnings.append(
            f"{train_summary['dropped']['count']} training example(s) dropped "
            f"(longer than max_length {max_length})"
        )
    data.report = {
        "kind": kind,
        "max_length": max_length,
        "truncation": truncation,
        "chat_template_sha256": renderer.template_sha256,
        "stop_tokens": renderer.stop_tokens,
        "validation_source": split_source,
        "formats": dict(train_file.formats),
        "exact_duplicates_dropped": {
            "count": len(dedup.duplicates),
            "pairs": [{"dropped": d, "duplicate_of": o} for d, o in dedup.duplicates[:MAX_IDS]],
            "validation_duplicates_of_training": len(val_dups),
        },
        "near_duplicates": {
            "count": len(near),
            "threshold": near_duplicate_threshold,
            "complete": search.complete,
            "clipped_examples": search.clipped_texts,
            "pairs": [
                {"a": dedup.kept[p.a].id, "b": dedup.kept[p.b].id, "similarity": p.similarity}
                for p in near[:MAX_IDS]
            ],
        },
        **({"pii": pii_section} if pii_section is not None else {}),
        "cleaning": cleaning,
        "train": train_summary,
        "validation": val_summary,
        "errors": errors,
        "warnings": warnings,
    }
    return data
