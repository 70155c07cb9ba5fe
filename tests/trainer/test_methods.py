"""The training-method registry: every entry is complete, the job schema and the registry agree,
and an unknown method is refused instead of running as another one."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from services.trainer.hyperparameters import Hyperparameters
from services.trainer.jobs import default_adapter_name
from services.trainer.methods import (
    DATA_KIND_LABELS,
    METHODS,
    TrainingMethod,
    get_method,
)
from services.trainer.schemas import JobSpec, Method, MethodType, ResolvedHyperparameters
from shared.datasets.records import Kind
from shared.errors import ValidationError


def entry_problems(key: str, entry: TrainingMethod) -> list[str]:
    """Every piece an entry lacks, or has in a form the trainer cannot use."""
    problems = []
    if entry.type != key:
        problems.append(f"{key}: type is {entry.type!r}")
    if entry.type not in Method.model_fields:
        problems.append(f"{key}: JobSpec's method has no {entry.type!r} block")
    if not entry.adapter_suffix:
        problems.append(f"{key}: no adapter_suffix")
    if entry.data_kind not in get_args(Kind) or entry.data_kind not in DATA_KIND_LABELS:
        problems.append(f"{key}: data_kind {entry.data_kind!r} is not a dataset kind")
    if not entry.data_label:
        problems.append(f"{key}: no data_label")
    if not entry.default_learning_rate > 0:
        problems.append(f"{key}: default_learning_rate {entry.default_learning_rate}")
    if not (
        isinstance(entry.hyperparameters, type)
        and issubclass(entry.hyperparameters, Hyperparameters)
    ):
        problems.append(f"{key}: hyperparameters is not a Hyperparameters model")
    if entry.sequences_per_example < 1:
        problems.append(f"{key}: sequences_per_example {entry.sequences_per_example}")
    for name in entry.openai_hyperparameters:
        if name not in ResolvedHyperparameters.model_fields:
            problems.append(f"{key}: openai_hyperparameters names unknown knob {name!r}")
    try:
        entry.load_recipe()
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        problems.append(f"{key}: recipe {entry.recipe!r} does not load: {exc}")
    return problems


@pytest.mark.parametrize("key", sorted(METHODS))
def test_every_entry_has_every_piece(key: str) -> None:
    assert entry_problems(key, METHODS[key]) == []


def test_an_incomplete_entry_fails_the_check() -> None:
    """The control: the check above can fail."""
    broken = dataclasses.replace(
        METHODS["supervised"],
        type="grpo",
        adapter_suffix="",
        data_kind="prompts",
        recipe="services.trainer.recipes.sft:no_such_recipe",
        sequences_per_example=0,
        openai_hyperparameters=("num_generations",),
    )
    problems = entry_problems("grpo", broken)
    for piece in (
        "method has no 'grpo' block",
        "no adapter_suffix",
        "data_kind 'prompts'",
        "sequences_per_example 0",
        "unknown knob 'num_generations'",
        "does not load",
    ):
        assert any(piece in p for p in problems), (piece, problems)


def test_the_job_schema_offers_exactly_the_registered_methods() -> None:
    assert set(get_args(MethodType)) == set(METHODS)


def test_an_unknown_method_is_refused_never_run_as_another() -> None:
    with pytest.raises(ValidationError) as info:
        get_method("grpo")
    assert info.value.code == "unknown_method" and "supervised, dpo" in info.value.message


# Methods whose block is required (reinforcement's grader has no default).
REQUIRED_BLOCKS = {
    "reinforcement": {"grader": {"type": "string_check", "reference": "x", "operation": "eq"}}
}


@pytest.mark.parametrize("key", sorted(METHODS))
def test_the_job_reads_its_method_entry(key: str) -> None:
    entry = METHODS[key]
    block = REQUIRED_BLOCKS.get(key)
    method = {"type": key, **({key: block} if block else {})}
    spec = JobSpec.model_validate({"training_file": "file-x", "method": method})
    assert spec.resolved().learning_rate == entry.default_learning_rate
    assert default_adapter_name(spec).endswith(f"-{entry.adapter_suffix}")
    shown = spec.openai_hyperparameters()
    assert set(shown) == {"n_epochs", "batch_size", "learning_rate_multiplier"} | set(
        entry.openai_hyperparameters
    )
    other = next(m for m in METHODS if m != key)
    with pytest.raises(ValueError, match=f"method.{other} is set"):
        JobSpec.model_validate(
            {"training_file": "file-x", "method": {"type": key, other: {"hyperparameters": {}}}}
        )
