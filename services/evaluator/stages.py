"""The stages of a run, how big each is, and the tracker that reports progress through them.

Which stages run and their sizes come from the components' registry entries
(``ComponentSpec.stage`` and ``.units``), here only, so the progress plan and the runner agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from services.evaluator.metrics.catalogue import COMPONENTS
from services.evaluator.suite import Suite, enabled_components
from shared.logs import event

if TYPE_CHECKING:
    from services.evaluator.plan import RunPlan

log = logging.getLogger(__name__)


def components_run(suite: Suite) -> list[str]:
    """The components a suite runs, in run order; generation runs too when one reads its answers."""
    enabled = enabled_components(suite)
    if any(COMPONENTS[c].needs_answers for c in enabled):
        enabled.add("generation")
    return [c for c in COMPONENTS if c in enabled]


def stage_label(component: str, role: str | None = None) -> str:
    stage = COMPONENTS[component].stage
    return f"{stage} ({role})" if role else stage


def stage_units(plan: RunPlan, component: str) -> int:
    units = COMPONENTS[component].units
    assert units is not None  # test_registry checks every component has one
    return units(plan.suite, len(plan.items))


def stages(plan: RunPlan) -> list[tuple[str, int]]:
    """Every stage of the run with its size: per-subject ones for each subject, then the rest."""
    run = components_run(plan.suite)
    out = [
        (stage_label(c, role), stage_units(plan, c))
        for role, _subject in plan.subjects
        for c in run
        if COMPONENTS[c].per_subject
    ]
    out += [(stage_label(c), stage_units(plan, c)) for c in run if not COMPONENTS[c].per_subject]
    return out


class Tracker:
    """Stages with item counts; reports overall fraction and the current stage to a callback."""

    def __init__(
        self,
        stages: list[tuple[str, int]],
        on_update: Callable[[float, str], None] | None = None,
        run_id: str = "",
    ) -> None:
        self.stages = stages
        self.run_id = run_id
        self.total = sum(max(n, 1) for _, n in stages) or 1
        self.done = 0
        self.on_update = on_update
        self.current = ""
        self._stage_done = 0
        self._stage_total = 0

    @contextmanager
    def stage(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        self.current, self._stage_done, self._stage_total = label, 0, max(total, 1)
        self._emit()
        event(log, "evaluation.stage_started", run=self.run_id, stage=label, items=total)
        started = time.perf_counter()

        def advance(n: int = 1) -> None:
            self._stage_done += n
            self.done += n
            self._emit()

        yield advance
        event(
            log,
            "evaluation.stage_finished",
            run=self.run_id,
            stage=label,
            items=total,
            seconds=round(time.perf_counter() - started, 2),
        )
        # Count the whole stage even if a part reported fewer units (cache hits).
        self.done += max(self._stage_total - self._stage_done, 0)
        self._emit()

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total)

    def _emit(self) -> None:
        if self.on_update is not None:
            self.on_update(self.fraction, self.current)
