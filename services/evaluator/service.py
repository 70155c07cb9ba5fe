"""Evaluation runs: prepare (validate everything), run, gate, store, promote.

This module wires the steps together; each concern lives in its own module:

* ``access.py``: what a request may name (files, endpoints, policies);
* ``prepare.py``: resolving and validating a request into a :class:`Prepared` run;
* ``runs.py``: the run rows (create, fail, store results, read, public view);
* ``promotion.py``: the alias move a passing run asks for;
* ``policy_store.py``: gate policies in the registry.

A run's rows are written under a fenced queue claim (``shared/registry/queue.py``): the run row
when it is created, then everything it produced *and the promotion it asks for*
(``promotion_state = pending``) in one transaction, then the alias move together with its mark
(``moved`` or ``refused``) in another. A crash between the two leaves ``pending``, which the next
claimant finishes. Every write names the claim's worker and attempt, so a worker whose run was
taken over writes nothing more and its failure path cannot touch the new owner's results.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.evaluator import gate as gate_mod
from services.evaluator import report
from services.evaluator.config import EvaluatorSettings

# The names below are this package's API (worker, routes, CLI, tests): re-exported on purpose.
from services.evaluator.policy_store import get_policy as get_policy
from services.evaluator.policy_store import register_policy as register_policy
from services.evaluator.prepare import Prepared as Prepared
from services.evaluator.prepare import prepare as prepare
from services.evaluator.promotion import finish_promotion as finish_promotion
from services.evaluator.promotion import requested_promotion as requested_promotion
from services.evaluator.results import RunResult
from services.evaluator.runner import Runner
from services.evaluator.runs import create_run as create_run
from services.evaluator.runs import fail_run as fail_run
from services.evaluator.runs import get_run as get_run
from services.evaluator.runs import list_runs as list_runs
from services.evaluator.runs import local_worker_id as local_worker_id
from services.evaluator.runs import public as public
from services.evaluator.runs import store_result as store_result
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.stages import Tracker, stages
from services.evaluator.statuses import ExitCode, RunStatus
from shared.logs import event
from shared.registry.db import Registry
from shared.registry.queue import Claim, ClaimLost

log = logging.getLogger(__name__)


class WorkerStopping(Exception):
    """The worker was asked to stop (SIGTERM): give the run back instead of failing it."""


@dataclass
class Outcome:
    run_id: str
    result: RunResult
    gate: gate_mod.GateResult | None
    paths: dict[str, Path]
    promotion: dict[str, Any] | None

    @property
    def exit_code(self) -> int:
        if self.promotion and self.promotion.get("error"):
            return int(ExitCode.ERROR)
        return self.gate.exit_code if self.gate else int(ExitCode.PASS)


def run_dir(settings: EvaluatorSettings, claim: Claim) -> Path:
    """Each attempt writes its own files, so a taken-over worker never overwrites or removes the
    new owner's report."""
    return settings.evaluations_dir / claim.row_id / f"attempt-{claim.attempt}"


def _discard(out_dir: Path) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        out_dir.parent.rmdir()  # only when no other attempt left files there


def execute(
    settings: EvaluatorSettings,
    registry: Registry,
    prepared: Prepared,
    tracker: Tracker | None = None,
    *,
    claim: Claim,
) -> Outcome:
    """Run, gate, write outputs, store (with the promotion asked for), promote. The run row must
    exist and ``claim`` hold it. On error the run is marked failed (with nothing else stored) and
    the error re-raised; :class:`ClaimLost` and :class:`WorkerStopping` write nothing."""
    plan = prepared.plan
    out_dir = run_dir(settings, claim)
    try:
        event(
            log,
            "evaluation.started",
            run=plan.run_id,
            candidate=plan.candidate.label,
            baseline=plan.baseline.label if plan.baseline else None,
            items=len(plan.items),
            promote=prepared.promote,
        )
        result = Runner(plan, tracker or Tracker(stages(plan), run_id=plan.run_id)).run()
        gate = gate_mod.decide(prepared.policy, result) if prepared.policy else None
        if gate is not None:
            event(
                log,
                "gate.decision",
                run=plan.run_id,
                candidate=plan.candidate.label,
                baseline=plan.baseline.label if plan.baseline else None,
                decision=gate.decision,
                policy=gate.policy_name,
                policy_sha256=gate.policy_sha256[:12],
                reasons=gate.reasons,
            )
        limits = prepared.policy.judge.model_dump() if prepared.policy else None
        paths = report.write_outputs(out_dir, result, gate, limits)
        summary = report.result_json(result, gate)
        store_result(
            registry,
            claim,
            result,
            gate,
            paths["html"],
            summary,
            evidence=prepared.evidence(),
            promotion=requested_promotion(prepared, gate),
        )
    except (ClaimLost, WorkerStopping):
        _discard(out_dir)
        raise
    except BaseException as exc:
        _discard(out_dir)
        fail_run(registry, claim, exc)
        raise
    event(
        log,
        "evaluation.finished",
        run=plan.run_id,
        decision=gate.decision if gate else None,
        seconds=round(result.timings.get("total_s", 0.0), 1),
    )
    promotion = finish_promotion(registry, claim)
    if promotion is not None and not promotion.get("moved"):
        event(
            log,
            "promotion.skipped",
            run=plan.run_id,
            alias=promotion.get("alias"),
            why=promotion.get("why") or promotion.get("error"),
        )
    return Outcome(plan.run_id, result, gate, paths, promotion)


def run_now(
    settings: EvaluatorSettings,
    registry: Registry,
    request: EvaluationCreate,
    tracker_factory: Any = None,
    *,
    local: bool = True,
) -> Outcome:
    """Synchronous run (CLI): validate first (nothing stored on bad input), then execute."""
    prepared = prepare(settings, registry, request, local=local)
    claim = create_run(
        registry,
        request,
        prepared,
        prepared.plan.run_id,
        RunStatus.RUNNING,
        owner=local_worker_id(),
    )
    assert claim is not None
    tracker = tracker_factory(prepared.plan) if tracker_factory else None
    return execute(settings, registry, prepared, tracker, claim=claim)


# --------------------------------------------------------------------------------------------
# queue (API + worker)


def submit(
    settings: EvaluatorSettings,
    registry: Registry,
    request: EvaluationCreate,
    *,
    requested_by: str = "",
) -> str:
    """Validate now (bad input -> error, no row), queue for a worker. ``requested_by``: the name
    of the key that asked (recorded, and named in the alias history on promotion)."""
    prepared = prepare(settings, registry, request, complete=False)
    create_run(
        registry,
        request,
        prepared,
        prepared.plan.run_id,
        RunStatus.QUEUED,
        requested_by=requested_by,
    )
    return prepared.plan.run_id
