"""What a recipe is given and what it returns.

Nothing in the recipes knows about HTTP or jobs: a recipe gets a :class:`RecipeContext` (the spec,
the data files, a scratch folder, a reporter for events and stop requests, and a ``register``
function) and returns a :class:`RecipeResult`. The worker and ``loraplex train run`` differ only
in the context they pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from services.trainer.config import TrainerSettings
from services.trainer.files import DataFile
from services.trainer.schemas import JobSpec
from shared.basemodel import ResolvedBaseModel

# Stores and registers the saved adapter folder with its manifest; returns the version id.
Register = Callable[[Path, dict[str, Any], ResolvedBaseModel], str]


class EventKind(StrEnum):
    """What a recipe's event is, so a reporter acts on the kind, never on the message's wording.

    A job stores each kind as its event row's ``type``, except ``started``, which is stored as the
    plain ``message`` it has always been (OpenAI's SDK knows the types message and metrics)."""

    MESSAGE = "message"
    VALIDATION = "validation"  # the data report; ``data`` is the report
    STARTED = "started"  # training started (or resumed); ``data`` has step and total_steps
    METRICS = "metrics"  # a logged training or validation step
    CHECKPOINT = "checkpoint"  # a checkpoint was saved; ``data`` has step, path and metrics


class Reporter(Protocol):
    """Where a recipe sends events and asks whether it should stop."""

    def event(
        self,
        message: str,
        *,
        level: str = "info",
        type: EventKind = EventKind.MESSAGE,
        data: Any = None,
    ) -> None: ...

    def should_stop(self) -> str | None:
        """A reason to stop at the next step (``"cancelled"``, ``"claim lost"``), else None."""
        ...

    def phase(self, status: str) -> None:
        """The job moved on (``"running"`` once its data passed validation)."""
        ...


class Stopped(Exception):
    """Training stopped on request before it finished; nothing was saved or registered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RecipeContext:
    spec: JobSpec
    settings: TrainerSettings
    train_file: DataFile
    validation_file: DataFile | None
    output_dir: Path
    reporter: Reporter
    register: Register
    adapter_name: str
    job_id: str | None = None
    base_adapter_dir: Path | None = None
    base_adapter_lineage: dict[str, Any] | None = None


@dataclass
class RecipeResult:
    version_id: str
    adapter_dir: Path
    manifest: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    trained_tokens: int = 0
