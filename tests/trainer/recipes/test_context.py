"""`services.trainer.recipes.context`: a stop carries its reason, the event kinds are the type
names a job stores, and results and contexts start with their documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.recipes.context import EventKind, RecipeResult, Stopped
from tests.trainer.recipes.specs import make_ctx


def test_a_stop_carries_its_reason() -> None:
    with pytest.raises(Stopped) as info:
        raise Stopped("claim lost")
    assert info.value.reason == "claim lost"
    assert str(info.value) == "claim lost"
    assert isinstance(info.value, Exception)


def test_event_kinds_are_the_stored_type_names() -> None:
    assert [k.value for k in EventKind] == [
        "message",
        "validation",
        "started",
        "metrics",
        "checkpoint",
    ]
    assert isinstance(EventKind.METRICS, str)  # stored as a plain string


def test_results_do_not_share_their_metrics(tmp_path: Path) -> None:
    first = RecipeResult("a@v1", tmp_path, {})
    second = RecipeResult("a@v2", tmp_path, {})
    first.metrics["train_loss"] = 1.0
    assert second.metrics == {} and second.trained_tokens == 0


def test_a_context_starts_without_a_job_or_a_starting_adapter(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    assert ctx.job_id is None
    assert ctx.base_adapter_dir is None and ctx.base_adapter_lineage is None
