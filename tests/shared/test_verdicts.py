"""The decision <-> exit status contract CI jobs rely on."""

from __future__ import annotations

import pytest

from shared.verdicts import ExitCode, decision_of


@pytest.mark.parametrize(
    ("decision", "code"), [("pass", 0), ("fail", 1), ("inconclusive", 2), ("error", 3)]
)
def test_documented_exit_codes(decision: str, code: int) -> None:
    assert ExitCode.of(decision) == code
    assert decision_of(code) == decision


@pytest.mark.parametrize("odd", ["", "PASS", "Pass", "skipped", "passed"])
def test_anything_but_a_decision_is_an_error(odd: str) -> None:
    assert ExitCode.of(odd) is ExitCode.ERROR


@pytest.mark.parametrize("code", [-1, 4, 143])
def test_unknown_statuses_read_as_error(code: int) -> None:
    assert decision_of(code) == "error"
