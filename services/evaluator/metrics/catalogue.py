"""Every metric the evaluator can compute, with what the gate needs to compare it.

``kind`` picks the paired method (pass/fail -> McNemar + Newcombe, continuous -> bootstrap);
``statistic`` names how per-item values combine into the corpus value (see ``stats.STATISTICS``).
Harness metrics are named ``lmeval.<task>.<metric>`` and described by the run that produced them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["binary", "continuous"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    component: str
    higher_is_better: bool
    kind: Kind
    statistic: str = "mean"
    # False for metrics that already compare two subjects (win rate) or describe the judge itself.
    paired: bool = True
    description: str = ""


def _spec(*args: object, **kwargs: object) -> MetricSpec:
    return MetricSpec(*args, **kwargs)  # type: ignore[arg-type]


CATALOGUE: dict[str, MetricSpec] = {
    s.name: s
    for s in [
        _spec("exact_match", "generation", True, "binary", description="output == reference"),
        _spec("accuracy", "generation", True, "binary", description="normalised label match"),
        _spec("json_valid", "generation", True, "binary", description="output parses as JSON"),
        _spec("json_match", "generation", True, "binary", description="parsed JSON equal"),
        _spec("schema_match", "generation", True, "binary", description="output fits the schema"),
        _spec("token_f1", "generation", True, "continuous", description="word-overlap F1"),
        _spec("rouge1", "generation", True, "continuous", description="ROUGE-1 F"),
        _spec("rouge2", "generation", True, "continuous", description="ROUGE-2 F"),
        _spec("rougeL", "generation", True, "continuous", description="ROUGE-L F"),
        _spec(
            "bleu", "generation", True, "continuous", "bleu", description="sacrebleu corpus BLEU"
        ),
        _spec(
            "chrf", "generation", True, "continuous", "chrf", description="sacrebleu corpus chrF"
        ),
        _spec(
            "perplexity",
            "perplexity",
            False,
            "continuous",
            "perplexity",
            description="token-weighted corpus perplexity of the reference text",
        ),
        _spec(
            "bits_per_byte",
            "perplexity",
            False,
            "continuous",
            "bits_per_byte",
            description="corpus bits per UTF-8 byte (tokenizer-independent)",
        ),
        _spec(
            "nll",
            "perplexity",
            False,
            "continuous",
            "ratio",
            description="mean negative log-likelihood per token (nats)",
        ),
        _spec("judge.score", "judge", True, "continuous", description="rubric score 1-10"),
        _spec(
            "judge.win_rate",
            "judge",
            True,
            "continuous",
            paired=False,
            description="pairwise vs baseline, both orders; tie = 0.5",
        ),
        _spec(
            "judge.flip_rate",
            "judge",
            False,
            "continuous",
            paired=False,
            description="share of pairs whose verdict changes when the order is swapped",
        ),
        _spec(
            "judge.anchor_accuracy",
            "judge",
            True,
            "continuous",
            paired=False,
            description="agreement with known verdicts on anchor pairs",
        ),
        _spec(
            "forgetting.accuracy",
            "forgetting",
            True,
            "binary",
            description="general multiple-choice accuracy (log-likelihood)",
        ),
        _spec(
            "parity.greedy_agreement",
            "parity",
            True,
            "binary",
            paired=False,
            description="in-process and served greedy outputs identical",
        ),
        _spec(
            "parity.max_logprob_diff",
            "parity",
            False,
            "continuous",
            "max",
            paired=False,
            description="largest |logprob difference| per token, in-process vs served",
        ),
        _spec(
            "parity.mean_logprob_diff",
            "parity",
            False,
            "continuous",
            paired=False,
            description="mean |logprob difference| per token, in-process vs served",
        ),
    ]
}

LMEVAL_RE = re.compile(r"^lmeval\.(?P<task>[A-Za-z0-9_\-]+)\.(?P<metric>[A-Za-z0-9_\-]+)$")


def is_known(name: str) -> bool:
    return name in CATALOGUE or LMEVAL_RE.match(name) is not None


def lookup(name: str) -> MetricSpec | None:
    return CATALOGUE.get(name)


def known_names() -> list[str]:
    return [*sorted(CATALOGUE), "lmeval.<task>.<metric>"]
