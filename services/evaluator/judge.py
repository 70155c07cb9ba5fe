"""LLM-as-judge against any OpenAI-compatible endpoint, with its reliability measured every run.

* rubric: the judge scores one answer 1-10 (reference answer shown when there is one);
* pairwise: candidate vs baseline, judged in **both orders**; the pair counts as a win only when
  both orders agree, a disagreement is a tie (FastChat's rule). The share of pairs whose verdict
  changes with the order is the judge's **flip rate**;
* anchors: pairs whose right answer is known (the reference vs a wrong answer: the item's
  ``rejected`` reply when the data has one, else another item's reference), judged in both orders;
  the share judged right is the **anchor accuracy**.

Every reply that cannot be parsed into a rating or a verdict is counted (by mode) with the judge's
**parse-failure rate**: an unparsed pairwise verdict becomes a tie and an unparsed rating drops the
item from ``judge.score``, so a judge that often answers off-format would otherwise look calmer
than it is.

Prompts are versioned and their sha256 recorded, so a changed prompt is a changed metric. The gate
refuses (inconclusive) a judge whose flip rate, anchor accuracy or parse-failure rate is past the
policy's limits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from services.evaluator.data import EvalItem
from services.evaluator.generation import DecodingSettings, chat_completions, message_text
from services.evaluator.results import JudgeReliability

Verdict = Literal["A", "B", "tie"]
Progress = Callable[[int], None]

RUBRIC_VERSION = "rubric-v1"
PAIRWISE_VERSION = "pairwise-v1"

RUBRIC_SYSTEM = (
    "You are an impartial judge. Rate how well the assistant's answer fulfils the user's request: "
    "correctness first, then completeness and format. Be strict."
)
RUBRIC_USER = (
    "[Request]\n{question}\n\n{reference_block}[Answer]\n{answer}\n\n"
    "Rate the answer from 1 (useless or wrong) to 10 (perfect). Reply with one short sentence of "
    "justification, then the rating in double brackets, for example: Rating: [[7]]"
)
PAIRWISE_SYSTEM = (
    "You are an impartial judge. Compare two answers to the same request and decide which one is "
    "better: correctness first, then completeness and format. Do not let the order of the answers, "
    "their length or their names influence you."
)
PAIRWISE_USER = (
    "[Request]\n{question}\n\n{reference_block}[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}\n\n"
    "Reply with one short sentence of justification, then your verdict: [[A]] if answer A is "
    "better, [[B]] if answer B is better, [[C]] for a tie."
)
REFERENCE_BLOCK = "[Reference answer]\n{reference}\n\n"


def prompt_sha256() -> str:
    text = "\n\0".join(
        [
            RUBRIC_VERSION,
            RUBRIC_SYSTEM,
            RUBRIC_USER,
            PAIRWISE_VERSION,
            PAIRWISE_SYSTEM,
            PAIRWISE_USER,
            REFERENCE_BLOCK,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# parsing

_RATING = [
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"rating\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.I),
    re.compile(r"\"?score\"?\s*[:=]\s*(\d+(?:\.\d+)?)", re.I),
    re.compile(r"\b(\d+(?:\.\d+)?)\s*/\s*10\b"),
]
_VERDICT = [
    re.compile(r"\[\[\s*([ABC])\s*\]\]"),
    re.compile(r"verdict\s*[:=]?\s*\**\s*\[?\s*(?:answer\s+)?([ABC])\b", re.I),
    re.compile(r"\b(?:answer|assistant)\s+([AB])\s+is\s+(?:better|superior|preferred)", re.I),
]
_TIE = re.compile(r"\b(tie|equally good|both (?:answers )?are equal)\b", re.I)


def parse_rating(text: str) -> float | None:
    for pattern in _RATING:
        match = pattern.search(text)
        if match:
            value = float(match.group(1))
            if 1.0 <= value <= 10.0:
                return value
    return None


def parse_verdict(text: str) -> Verdict | None:
    for pattern in _VERDICT:
        found = {m.upper() for m in pattern.findall(text)}
        if len(found) == 1:
            v = found.pop()
            return "tie" if v == "C" else v
        if len(found) > 1:
            return None  # contradictory verdicts: unparseable, not a guess
    if _TIE.search(text):
        return "tie"
    return None


# --------------------------------------------------------------------------------------------
# calling


@dataclass(frozen=True)
class JudgeEndpoint:
    url: str
    model: str
    api_key: str | None = None
    concurrency: int = 8
    max_tokens: int = 256

    def ask(self, prompts: list[tuple[str, str]], progress: Progress | None = None) -> list[str]:
        messages = [
            [{"role": "system", "content": s}, {"role": "user", "content": u}] for s, u in prompts
        ]
        responses = chat_completions(
            self.url,
            self.model,
            messages,
            DecodingSettings(max_new_tokens=self.max_tokens, temperature=0.0),
            concurrency=self.concurrency,
            api_key=self.api_key,
            progress=progress,
        )
        return [message_text(r) for r in responses]


def _ref_block(item: EvalItem) -> str:
    return REFERENCE_BLOCK.format(reference=item.reference) if item.reference else ""


def rubric_prompt(item: EvalItem, answer: str) -> tuple[str, str]:
    return RUBRIC_SYSTEM, RUBRIC_USER.format(
        question=item.prompt_text, reference_block=_ref_block(item), answer=answer
    )


def pairwise_prompt(item: EvalItem, a: str, b: str, *, reference: bool = True) -> tuple[str, str]:
    return PAIRWISE_SYSTEM, PAIRWISE_USER.format(
        question=item.prompt_text,
        reference_block=_ref_block(item) if reference else "",
        answer_a=a,
        answer_b=b,
    )


@dataclass
class PairOutcome:
    first: Verdict | None  # candidate shown as A
    second: Verdict | None  # candidate shown as B

    @property
    def candidate_score(self) -> float:
        """1 win, 0 loss, 0.5 tie or disagreement (both orders must agree to count)."""
        a = {"A": 1.0, "B": 0.0, "tie": 0.5, None: 0.5}[self.first]
        b = {"B": 1.0, "A": 0.0, "tie": 0.5, None: 0.5}[self.second]
        return a if a == b else 0.5

    @property
    def flipped(self) -> bool:
        mapped_first = {"A": "cand", "B": "base", "tie": "tie", None: None}[self.first]
        mapped_second = {"B": "cand", "A": "base", "tie": "tie", None: None}[self.second]
        if mapped_first is None or mapped_second is None:
            return False
        return mapped_first != mapped_second


def judge_pairs(
    judge: JudgeEndpoint,
    items: Sequence[EvalItem],
    candidate: Sequence[str],
    baseline: Sequence[str],
    progress: Progress | None = None,
) -> list[PairOutcome]:
    prompts = [pairwise_prompt(i, c, b) for i, c, b in zip(items, candidate, baseline, strict=True)]
    prompts += [
        pairwise_prompt(i, b, c) for i, c, b in zip(items, candidate, baseline, strict=True)
    ]
    verdicts = [parse_verdict(t) for t in judge.ask(prompts, progress)]
    n = len(items)
    return [PairOutcome(verdicts[k], verdicts[n + k]) for k in range(n)]


def judge_rubric(
    judge: JudgeEndpoint,
    items: Sequence[EvalItem],
    answers: Sequence[str],
    progress: Progress | None = None,
) -> list[float | None]:
    texts = judge.ask([rubric_prompt(i, a) for i, a in zip(items, answers, strict=True)], progress)
    return [parse_rating(t) for t in texts]


def anchor_pairs(items: Sequence[EvalItem], count: int) -> list[tuple[EvalItem, str, str]]:
    """``(item, good, bad)``: the reference against a known-wrong answer."""
    out: list[tuple[EvalItem, str, str]] = []
    usable = [i for i in items if i.reference and not i.is_text]
    for k, item in enumerate(usable[:count]):
        bad = item.rejected
        if bad is None:
            others = [o.reference for o in usable if o.reference != item.reference]
            if not others:
                continue
            bad = others[(k * 7 + 3) % len(others)]
        out.append((item, item.reference, bad))
    return out


def judge_anchors(
    judge: JudgeEndpoint,
    anchors: Sequence[tuple[EvalItem, str, str]],
    progress: Progress | None = None,
) -> tuple[int, int, int]:
    """``(correct, judged, parse_failures)``; each anchor is judged in both orders, no reference
    shown (it would give the answer away)."""
    prompts = [pairwise_prompt(i, g, b, reference=False) for i, g, b in anchors]
    prompts += [pairwise_prompt(i, b, g, reference=False) for i, g, b in anchors]
    verdicts = [parse_verdict(t) for t in judge.ask(prompts, progress)]
    n = len(anchors)
    correct = sum(v == "A" for v in verdicts[:n]) + sum(v == "B" for v in verdicts[n:])
    failures = sum(v is None for v in verdicts)
    return correct, 2 * n, failures


def reliability(
    judge: JudgeEndpoint,
    outcomes: Sequence[PairOutcome],
    anchors: tuple[int, int, int] | None,
    rubric: Sequence[float | None] = (),
) -> JudgeReliability:
    """The judge's reliability figures. ``rubric`` is every rubric score asked for (all subjects),
    None where the reply held no rating: such an item silently leaves ``judge.score``'s n, so it
    is counted here with the pairwise and anchor replies that could not be parsed."""
    decisive = [v for o in outcomes for v in (o.first, o.second) if v in ("A", "B")]
    flips = sum(o.flipped for o in outcomes)
    pair_failures = sum((o.first is None) + (o.second is None) for o in outcomes)
    rubric_failures = sum(s is None for s in rubric)
    correct, judged, anchor_failures = anchors or (0, 0, 0)
    replies = 2 * len(outcomes) + len(rubric) + judged
    failures = pair_failures + rubric_failures + anchor_failures
    return JudgeReliability(
        judge_model=judge.model,
        endpoint=judge.url,
        prompt_version=f"{PAIRWISE_VERSION}+{RUBRIC_VERSION}",
        prompt_sha256=prompt_sha256(),
        pairs=len(outcomes),
        flips=flips,
        flip_rate=flips / len(outcomes) if outcomes else None,
        first_position_rate=(sum(v == "A" for v in decisive) / len(decisive) if decisive else None),
        anchors=judged // 2,
        anchor_accuracy=correct / judged if judged else None,
        replies=replies,
        parse_failures=failures,
        parse_failure_rate=failures / replies if replies else None,
        parse_failures_by_mode={
            "pairwise": pair_failures,
            "rubric": rubric_failures,
            "anchors": anchor_failures,
        },
    )
