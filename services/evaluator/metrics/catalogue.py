"""The evaluator's registry: one entry per component and one per metric, and nothing else decides.

A **component** is a part of a suite (``Suite.<name>``) that produces metrics; a **metric** entry
holds everything the rest of the evaluator asks about it: its component, ``kind`` (pass/fail ->
McNemar + Newcombe, continuous -> bootstrap), direction, ``statistic`` (how per-item values
combine into the corpus value, see ``stats.STATISTICS``), whether it pairs item by item with a
baseline, which judge mode produces it, and for metrics scored here (generation, perplexity) the
per-item ``score`` function and the ``definition`` recorded with every value.

Harness metrics are named ``lmeval.<task>.<metric>`` and described by the run that produced them
(:func:`lmeval_spec`). Adding a metric is one entry here plus its scoring code; :func:`problems`
lists what an entry lacks and ``tests/evaluator/test_registry.py`` fails on any of it; the entry
types and that check are in ``spec.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from services.evaluator.metrics import overlap, task
from services.evaluator.metrics.components import COMPONENTS as COMPONENTS

# The entry types are re-exported: callers import them from the registry.
from services.evaluator.metrics.spec import JUDGE_MODES as JUDGE_MODES
from services.evaluator.metrics.spec import KINDS as KINDS
from services.evaluator.metrics.spec import LMEVAL_RE as LMEVAL_RE
from services.evaluator.metrics.spec import ComponentSpec as ComponentSpec
from services.evaluator.metrics.spec import Definition as Definition
from services.evaluator.metrics.spec import ItemValue as ItemValue
from services.evaluator.metrics.spec import JudgeMode as JudgeMode
from services.evaluator.metrics.spec import Kind as Kind
from services.evaluator.metrics.spec import MetricSpec as MetricSpec
from services.evaluator.metrics.spec import ScoreOptions as ScoreOptions
from services.evaluator.metrics.spec import Scorer as Scorer
from services.evaluator.metrics.spec import check
from shared.errors import ValidationError


def _fixed(settings: dict[str, Any]) -> Definition:
    return lambda _options: dict(settings)


@lru_cache(maxsize=4096)
def _rouge(output: str, reference: str, stemmer: bool) -> dict[str, float]:
    # The three ROUGE entries score the same pair: compute it once.
    return overlap.rouge_item(output, reference, stemmer)


def _rouge_entry(kind: str, description: str) -> MetricSpec:
    return MetricSpec(
        kind,
        "generation",
        True,
        "continuous",
        description=description,
        score=lambda o, i, opt: _rouge(o, i.reference, opt.rouge_stemmer)[kind],
        definition=lambda opt: overlap.RougeSettings(use_stemmer=opt.rouge_stemmer).describe(),
    )


def _sacrebleu_definition(signature: Callable[[], str]) -> Definition:
    return lambda _options: {"signature": signature(), "aggregate": "corpus"}


_JSON_PARSER = {"parser": "json.loads", "code_fences": "stripped"}

CATALOGUE: dict[str, MetricSpec] = {
    s.name: s
    for s in [
        MetricSpec(
            "exact_match",
            "generation",
            True,
            "binary",
            description="output == reference",
            score=lambda o, i, _opt: task.exact_match(o, i.reference),
            definition=_fixed({"normalize": "strip + collapse whitespace", "case_sensitive": True}),
        ),
        MetricSpec(
            "accuracy",
            "generation",
            True,
            "binary",
            description="normalised label match",
            score=lambda o, i, _opt: task.accuracy(o, i.reference),
            definition=_fixed({"normalize": "NFKC, casefold, strip punctuation and whitespace"}),
        ),
        MetricSpec(
            "json_valid",
            "generation",
            True,
            "binary",
            description="output parses as JSON",
            score=lambda o, i, _opt: task.json_valid(o, i.reference),
            definition=_fixed(_JSON_PARSER),
        ),
        MetricSpec(
            "json_match",
            "generation",
            True,
            "binary",
            description="parsed JSON equal",
            score=lambda o, i, _opt: task.json_match(o, i.reference),
            definition=_fixed(
                {"parser": "json.loads", "equality": "parsed values (key order ignored)"}
            ),
        ),
        MetricSpec(
            "schema_match",
            "generation",
            True,
            "binary",
            description="output fits the schema",
            score=lambda o, i, _opt: task.schema_match(o, i.reference, i.raw.get("schema")),
            definition=_fixed(
                {
                    "schema": "item 'schema' field (JSON Schema) if present, else inferred from "
                    "the reference: same keys required, same JSON types, no extra keys",
                }
            ),
        ),
        MetricSpec(
            "token_f1",
            "generation",
            True,
            "continuous",
            description="word-overlap F1",
            score=lambda o, i, _opt: task.token_f1(o, i.reference),
            definition=_fixed(
                {
                    "tokenizer": "unicode \\w+ words, CJK characters split, casefold",
                    "average": "per item, then mean",
                }
            ),
        ),
        _rouge_entry("rouge1", "ROUGE-1 F"),
        _rouge_entry("rouge2", "ROUGE-2 F"),
        _rouge_entry("rougeL", "ROUGE-L F"),
        MetricSpec(
            "bleu",
            "generation",
            True,
            "continuous",
            "bleu",
            description="sacrebleu corpus BLEU",
            score=lambda o, i, _opt: overlap.bleu_item_stats(o, i.reference),
            definition=_sacrebleu_definition(overlap.bleu_signature),
        ),
        MetricSpec(
            "chrf",
            "generation",
            True,
            "continuous",
            "chrf",
            description="sacrebleu corpus chrF",
            score=lambda o, i, _opt: overlap.chrf_item_stats(o, i.reference),
            definition=_sacrebleu_definition(overlap.chrf_signature),
        ),
        MetricSpec(
            "perplexity",
            "perplexity",
            False,
            "continuous",
            "perplexity",
            description="token-weighted corpus perplexity of the reference text",
            score=lambda s, _opt: [s.nll, float(s.n_tokens)],
            definition=_fixed({}),
        ),
        MetricSpec(
            "nll",
            "perplexity",
            False,
            "continuous",
            "ratio",
            description="mean negative log-likelihood per token (nats)",
            score=lambda s, _opt: [s.nll, float(s.n_tokens)],
            definition=_fixed({}),
        ),
        MetricSpec(
            "bits_per_byte",
            "perplexity",
            False,
            "continuous",
            "bits_per_byte",
            description="corpus bits per UTF-8 byte (tokenizer-independent)",
            score=lambda s, _opt: [s.nll, float(s.n_bytes)],
            definition=_fixed({}),
        ),
        MetricSpec(
            "judge.score",
            "judge",
            True,
            "continuous",
            description="rubric score 1-10",
            judge_mode="rubric",
        ),
        MetricSpec(
            "judge.win_rate",
            "judge",
            True,
            "continuous",
            paired=False,
            description="pairwise vs baseline, both orders; tie = 0.5",
            judge_mode="pairwise",
        ),
        MetricSpec(
            "judge.flip_rate",
            "judge",
            False,
            "continuous",
            paired=False,
            description="share of pairs whose verdict changes when the order is swapped",
        ),
        MetricSpec(
            "judge.anchor_accuracy",
            "judge",
            True,
            "continuous",
            paired=False,
            description="agreement with known verdicts on anchor pairs",
        ),
        MetricSpec(
            "forgetting.accuracy",
            "forgetting",
            True,
            "binary",
            description="general multiple-choice accuracy (log-likelihood), gated against the "
            "bare base model",
            compare_with="base",
        ),
        MetricSpec(
            "parity.greedy_agreement",
            "parity",
            True,
            "binary",
            paired=False,
            description="in-process and served greedy outputs identical",
        ),
        MetricSpec(
            "parity.max_logprob_diff",
            "parity",
            False,
            "continuous",
            "max",
            paired=False,
            description="largest |logprob difference| per token, in-process vs served",
        ),
        MetricSpec(
            "parity.mean_logprob_diff",
            "parity",
            False,
            "continuous",
            paired=False,
            description="mean |logprob difference| per token, in-process vs served",
        ),
        MetricSpec(
            "pii.leak_rate",
            "pii",
            False,
            "binary",
            description="share of outputs reproducing PII of the candidate's training data",
        ),
        MetricSpec(
            "reward.score",
            "reward",
            True,
            "continuous",
            description="the reward model's scalar score of prompt + answer",
        ),
        MetricSpec(
            "contamination.rate",
            "contamination",
            False,
            "binary",
            paired=False,
            description="share of evaluation items found in the candidate's training data",
        ),
    ]
}


def is_known(name: str) -> bool:
    return name in CATALOGUE or LMEVAL_RE.match(name) is not None


def lookup(name: str) -> MetricSpec | None:
    return CATALOGUE.get(name)


def known_names() -> list[str]:
    return [*sorted(CATALOGUE), "lmeval.<task>.<metric>"]


def unknown_metric(
    name: str, component: str | None = None, param: str = "metrics"
) -> ValidationError:
    """The one error for a metric name nobody registered, naming the valid ones."""
    valid = metrics_of(component) if component else known_names()
    where = f" {component}" if component else ""
    return ValidationError(
        f"unknown{where} metric {name!r}; known{where} metrics: {', '.join(valid)}", param=param
    )


def spec(name: str) -> MetricSpec:
    """The entry for ``name``; a clear error naming the valid metrics if there is none."""
    found = CATALOGUE.get(name)
    if found is None:
        raise unknown_metric(name)
    return found


def component_of(name: str) -> str:
    """Which component produces ``name`` (harness metrics: ``lmeval``)."""
    found = CATALOGUE.get(name)
    if found is not None:
        return found.component
    if LMEVAL_RE.match(name):
        return "lmeval"
    raise unknown_metric(name)


def is_judged(name: str) -> bool:
    """Whether ``name``'s values come from the LLM judge (so its reliability limits apply)."""
    found = CATALOGUE.get(name)
    return found is not None and COMPONENTS[found.component].judged


def metrics_of(component: str) -> list[str]:
    return [n for n, s in CATALOGUE.items() if s.component == component]


def lmeval_spec(
    name: str, higher_is_better: bool, kind: Kind, statistic: str = "mean", paired: bool = True
) -> MetricSpec:
    """A harness metric, described by the run that produced it."""
    return MetricSpec(name, "lmeval", higher_is_better, kind, statistic, paired)


def problems(
    metrics: Mapping[str, MetricSpec] | None = None,
    components: Mapping[str, ComponentSpec] | None = None,
) -> list[str]:
    """What each entry lacks (default: the shipped registry); empty when nothing does."""
    return check(
        CATALOGUE if metrics is None else metrics,
        COMPONENTS if components is None else components,
    )
