"""Decisions a recipe takes from the machine: examples per forward pass on the CPU."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.trainer.recipes import decisions


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisions, "cuda_available", lambda: False)


def _hp(batch_size: int = 4, micro: object = "auto") -> Any:
    return SimpleNamespace(batch_size=batch_size, micro_batch_size=micro)


@pytest.mark.parametrize(
    ("threads", "expected"),
    [(1, 2), (2, 4), (4, 4)],  # 105-token examples: 160 tokens per thread per pass
)
def test_more_threads_get_bigger_passes(threads: int, expected: int) -> None:
    assert decisions.choose_micro_batch(_hp(), 105.0, threads=threads) == expected


def test_the_pass_divides_the_batch() -> None:
    # 6 examples of 100 tokens on 2 threads: 4 would reach 320 tokens but does not divide 6.
    assert decisions.choose_micro_batch(_hp(batch_size=6), 100.0, threads=2) == 6


def test_an_explicit_micro_batch_wins() -> None:
    assert decisions.choose_micro_batch(_hp(micro=1), 105.0, threads=8) == 1
