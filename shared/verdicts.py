"""Gate decisions and the exit codes every command line maps them to, defined once.

CI jobs branch on these codes (``loraplex gate``, ``loraplex release run``, ``make demo``), so they are
part of the public interface: 0 pass, 1 fail, 2 inconclusive, 3 error (bad input, a service down).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Decision(StrEnum):
    """What a gate decided about a candidate."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class ExitCode(IntEnum):
    """Process exit status of every loraplex command."""

    PASS = 0
    FAIL = 1
    INCONCLUSIVE = 2
    ERROR = 3


def exit_code(decision: str) -> ExitCode:
    """The exit status for a decision; anything that is not a decision is an error."""
    try:
        return ExitCode[Decision(decision).name]
    except ValueError:
        return ExitCode.ERROR


def decision_of(code: int) -> str:
    """The decision a command's exit status reports, or ``"error"``."""
    try:
        return Decision[ExitCode(code).name].value
    except (ValueError, KeyError):
        return "error"
