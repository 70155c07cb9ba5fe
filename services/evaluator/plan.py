"""A run's plan: resolved subjects, loaded data and the suite, checked before any model loads.

``service.prepare`` builds a :class:`RunPlan` from a request; :func:`validate_plan` and
:func:`preflight` refuse what cannot work (wrong data shape, unknown metric, unreachable endpoint)
with a clear message before anything heavy starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.evaluator import fewshot
from services.evaluator.contamination import TrainingData
from services.evaluator.data import EvalData, EvalItem
from services.evaluator.generation import check_server
from services.evaluator.metrics import catalogue
from services.evaluator.reward import RewardModel
from services.evaluator.subjects import Subject
from services.evaluator.suite import Suite, enabled_components
from shared.errors import SystemFailure, ValidationError


@dataclass
class RunPlan:
    run_id: str
    candidate: Subject
    baseline: Subject | None
    data: EvalData
    suite: Suite
    server_url: str = ""
    server_api_key: str = ""
    judge_url: str = ""
    judge_model: str = ""
    judge_api_key: str = ""
    cache_dir: Path | None = None
    threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # (name, path) of the candidate's training files (its own, then those of the versions it
    # continued from), or why they cannot all be read.
    training_files: list[tuple[str, Path]] | str = field(default_factory=list)
    # The candidate's training rows for the contamination check, or why there are none.
    training: TrainingData | str = "the candidate's lineage names no training data"
    # False: prepared to validate a request (an API submit), without what only a run reads.
    complete: bool = True
    # The suite's reward model (``reward.score``), resolved and checked.
    reward_model: RewardModel | None = None

    @property
    def subjects(self) -> list[tuple[str, Subject]]:
        out = [("candidate", self.candidate)]
        if self.baseline is not None:
            out.append(("baseline", self.baseline))
        return out

    @property
    def items(self) -> list[EvalItem]:
        items = self.data.items
        return items[: self.suite.limit] if self.suite.limit else items

    def generation_backend(self) -> str:
        part = self.suite.generation
        if part.backend == "auto":
            return "server" if self.server_url else "local"
        return part.backend

    def describe(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.label,
            "baseline": self.baseline.label if self.baseline else None,
            **(
                {"fewshot": fewshot.describe(self.baseline)}
                if self.baseline and self.baseline.shots
                else {}
            ),
            "data": self.data.describe(),
            "suite": self.suite.model_dump(mode="json", exclude={"judge": {"api_key"}}),
            "server_url": self.server_url or None,
        }


def validate_plan(plan: RunPlan) -> None:
    """Everything that can be checked before a model is loaded, with clear messages."""
    suite = plan.suite
    needs_prompts = sorted(
        c for c in enabled_components(suite) if catalogue.COMPONENTS[c].needs_prompts
    )
    if needs_prompts and not plan.data.has_prompts:
        text_rows = [i.location for i in plan.data.items if i.is_text][:3]
        raise ValidationError(
            f"{', '.join(needs_prompts)} need prompt + reference rows, but the data has plain "
            f"text rows (e.g. {', '.join(text_rows)}); use the perplexity-only suite `quick`",
            param="data",
        )
    for name in suite.generation.metrics:
        if catalogue.lookup(name) is None or catalogue.spec(name).component != "generation":
            raise catalogue.unknown_metric(name, "generation", param="suite")
    if plan.generation_backend() == "server" and suite.generation.enabled and not plan.server_url:
        raise ValidationError("generation backend `server` needs a server URL", param="server_url")
    if suite.lmeval.enabled and plan.baseline is not None and plan.baseline.shots:
        raise ValidationError(
            f"lm-eval tasks set their own few-shot examples (num_fewshot), so they cannot run "
            f"on the baseline {plan.baseline.label}; run them in a separate evaluation",
            param="baseline",
        )
    if suite.parity.enabled and not plan.server_url:
        raise ValidationError("the serving-parity check needs a server URL", param="server_url")
    if suite.judge.enabled:
        if not plan.judge_url:
            raise ValidationError(
                "the judge needs an OpenAI-compatible endpoint: set judge.endpoint in the suite, "
                "LORAPLEX_JUDGE_URL or LORAPLEX_SERVER_URL",
                param="judge",
            )
        if "pairwise" in suite.judge.modes and plan.baseline is None:
            raise ValidationError("pairwise judging needs a baseline", param="baseline")


def preflight(plan: RunPlan) -> None:
    """Reach every remote endpoint the run will need before doing any heavy work."""
    if plan.suite.judge.enabled:
        try:
            check_server(plan.judge_url, plan.judge_api_key or None)
        except SystemFailure as exc:
            raise SystemFailure(
                f"the judge endpoint {plan.judge_url} is unreachable: {exc.message}",
                param="judge",
            ) from exc
    uses_server = (plan.suite.generation.enabled and plan.generation_backend() == "server") or (
        plan.suite.parity.enabled
        or (plan.suite.lmeval.enabled and plan.suite.lmeval.backend == "local-completions")
    )
    if uses_server:
        check_server(plan.server_url, plan.server_api_key or None)
