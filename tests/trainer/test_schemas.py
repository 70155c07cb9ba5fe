"""The trainer's request and response schemas: safe LoRA target modules, OpenAI timestamps and
the job fields OpenAI has but we refuse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pydantic
import pytest

from services.trainer.schemas import JobSpec, target_modules_problem, unix_time


@pytest.mark.parametrize("value", ["all-linear", "q_proj", ["q_proj", "model.layers.0.v_proj"]])
def test_plain_target_modules_are_accepted(value: str | list[str]) -> None:
    assert target_modules_problem(value) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("(.|.)*Z", "not a plain module name"),
        (["q_proj", ".*_proj"], "not a plain module name"),
        ([], "the list is empty"),
        ([f"m{i}" for i in range(65)], "more than 64"),
    ],
)
def test_regular_expressions_and_odd_lists_are_refused(
    value: str | list[str], problem: str
) -> None:
    found = target_modules_problem(value)
    assert found is not None and problem in found and "all-linear" in found


def test_unix_time_reads_naive_datetimes_as_utc() -> None:
    assert unix_time(None) is None
    assert unix_time(datetime(1970, 1, 1, 0, 1)) == 60
    assert unix_time(datetime(1970, 1, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 60
    assert unix_time(datetime(1970, 1, 1, 0, 1, tzinfo=UTC)) == 60


def test_oversized_metadata_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="at most 16 metadata keys"):
        JobSpec.model_validate(
            {"training_file": "file-x", "metadata": {f"k{i}": "v" for i in range(17)}}
        )
