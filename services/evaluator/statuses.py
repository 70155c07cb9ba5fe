"""The evaluator's states: run statuses, promotion states, gate verdicts (and the exit codes CI reads,
defined in :mod:`shared.verdicts`).

One definition each; the values are what the registry stores and the API and CLI return, so they
never change. Light on purpose (no third-party imports): the CLI imports it at start-up.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from shared.verdicts import ExitCode as ExitCode  # re-exported: defined once, for every CLI


class RunStatus(StrEnum):
    """An evaluation run's status (``evaluation_runs.status``)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class PromotionState(StrEnum):
    """What became of the alias move a run asked for (``evaluation_runs.promotion_state``)."""

    SKIPPED = "skipped"  # the gate did not pass: nothing moves
    PENDING = "pending"  # a stored pass; the move follows (or the next claimant finishes it)
    MOVED = "moved"
    REFUSED = "refused"  # the registry refused the move (moved meanwhile, protected, ...)


# The gate's verdict on a run, and on each policy line (a line may also be skipped).
Decision = Literal["pass", "fail", "inconclusive"]
LineStatus = Literal["pass", "fail", "inconclusive", "skipped"]
