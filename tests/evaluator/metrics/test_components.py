"""The components: every part of a suite that produces metrics, and the size of its stage."""

from __future__ import annotations

import pytest

from services.evaluator.metrics.components import COMPONENTS
from services.evaluator.suite import Suite


def test_every_component_is_a_suite_part() -> None:
    suite = Suite()
    parts = {name for name in Suite.model_fields if hasattr(getattr(suite, name), "enabled")}
    assert set(COMPONENTS) == parts


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_each_component_sizes_its_stage(name: str) -> None:
    units = COMPONENTS[name].units
    assert units is not None
    size = units(Suite(), 5)
    assert isinstance(size, int) and size >= 0
