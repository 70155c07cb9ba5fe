"""A job's hyperparameters: "auto" or a valid value, unknown fields refused."""

from __future__ import annotations

import math
from typing import Any

import pydantic
import pytest

from services.trainer.hyperparameters import Hyperparameters, MethodParams


def test_auto_everywhere_by_default_and_explicit_values_kept() -> None:
    auto = MethodParams().hyperparameters
    assert auto.n_epochs == auto.batch_size == auto.micro_batch_size == "auto"
    set_ = Hyperparameters(n_epochs=3, batch_size=8, micro_batch_size=2, beta=0.2)
    assert (set_.n_epochs, set_.batch_size, set_.micro_batch_size, set_.beta) == (3, 8, 2, 0.2)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"n_epochs": 0}, "at least 1"),
        ({"batch_size": -2}, "at least 1"),
        ({"micro_batch_size": 0}, "at least 1"),
        ({"batch_size": 8, "micro_batch_size": 3}, "must divide batch_size"),
        ({"learning_rate_multiplier": 0.0}, "positive number"),
        ({"beta": math.inf}, "positive number"),
        ({"learning_rate": 0}, "greater than 0"),
        ({"learing_rate": 0.1}, "Extra inputs"),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        Hyperparameters(**values)
