"""The evaluator's components: the parts of a suite (``Suite.<name>``) that produce metrics.

One :class:`ComponentSpec` per component, in run order; the metric entries that name them are in
``catalogue.py`` (which re-exports :data:`COMPONENTS`), and ``spec.check`` tests both.
"""

from __future__ import annotations

from typing import Any

from services.evaluator.metrics.spec import ComponentSpec


def _forgetting_units(suite: Any, _n: int) -> int:
    from services.evaluator import forgetting  # it imports this module: import it late

    return forgetting.count(suite.forgetting.data)


def _judge_units(suite: Any, n: int) -> int:
    # Both orders of every judged item per mode, plus both orders of every anchor pair.
    judged: int = min(n, suite.judge.max_items or n)
    anchors: int = suite.judge.anchors
    return 2 * judged * len(suite.judge.modes) + 2 * anchors


# In run order: per-subject components run for the candidate, then the baseline; the others after.
COMPONENTS: dict[str, ComponentSpec] = {
    c.name: c
    for c in [
        ComponentSpec(
            "generation",
            "answers generated for each prompt, scored against the reference",
            "services.evaluator.metrics.task",
            needs_prompts=True,
            scores_per_item=True,
            suite_selectable=True,
            stage="generate",
            units=lambda _suite, n: n,
        ),
        ComponentSpec(
            "perplexity",
            "log-likelihood of the reference text under each subject",
            "services.evaluator.perplexity",
            scores_per_item=True,
            stage="perplexity",
            units=lambda _suite, n: n,
        ),
        ComponentSpec(
            "forgetting",
            "general multiple-choice questions, to see what the adapter lost",
            "services.evaluator.forgetting",
            stage="forgetting",
            units=_forgetting_units,
        ),
        ComponentSpec(
            "lmeval",
            "lm-eval harness tasks; metric names lmeval.<task>.<metric>",
            "services.evaluator.lmeval_runner",
            open_names=True,
            stage="lm-eval",
            units=lambda suite, _n: len(suite.lmeval.tasks),
        ),
        ComponentSpec(
            "judge",
            "an LLM judge: rubric scores, pairwise wins, and its own reliability",
            "services.evaluator.judge",
            needs_prompts=True,
            needs_answers=True,
            per_subject=False,
            judged=True,
            stage="judge",
            units=_judge_units,
        ),
        ComponentSpec(
            "parity",
            "served model vs in-process model on the same prompts",
            "services.evaluator.parity",
            needs_prompts=True,
            per_subject=False,
            stage="parity",
            units=lambda suite, _n: suite.parity.items,
        ),
        ComponentSpec(
            "pii",
            "outputs that reproduce PII from the candidate's training data (memorisation)",
            "services.evaluator.pii_leak",
            needs_prompts=True,
            needs_answers=True,
            stage="pii",
            units=lambda _suite, n: n,
        ),
        ComponentSpec(
            "reward",
            "answers scored by a registered reward model (method 'reward')",
            "services.evaluator.reward",
            needs_prompts=True,
            needs_answers=True,
            stage="reward",
            units=lambda _suite, n: n,
        ),
        ComponentSpec(
            "contamination",
            "evaluation items compared with the candidate's training rows (exact and 8-gram)",
            "services.evaluator.contamination",
            per_subject=False,
            stage="contamination",
            units=lambda _suite, n: n,
        ),
    ]
}
