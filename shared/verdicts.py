"""The exit codes every loraplex command line maps a gate decision to, defined once.

CI jobs branch on these codes (``loraplex gate``, ``loraplex eval run``, ``loraplex release run``,
``make demo``), so they are part of the public interface: 0 pass, 1 fail, 2 inconclusive, 3 error
(bad input, a crashed run, a refused promotion, a service down).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status of every loraplex command, and ``exit_code`` in evaluation results."""

    PASS = 0
    FAIL = 1
    INCONCLUSIVE = 2
    ERROR = 3

    @classmethod
    def of(cls, outcome: str) -> ExitCode:
        """The code of a decision (``pass``, ``fail``, ``inconclusive``); anything else, ``error``
        included, is ``ERROR``."""
        return next((code for code in cls if code.name.lower() == outcome), cls.ERROR)


def decision_of(code: int) -> str:
    """The decision (or ``"error"``) a command's exit status reports."""
    try:
        return ExitCode(code).name.lower()
    except ValueError:
        return "error"
