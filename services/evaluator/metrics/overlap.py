"""Overlap metrics: ROUGE through ``rouge_score``, BLEU and chrF through ``sacrebleu``.

rouge_score's default tokenizer keeps only ``[a-z0-9]``, so Cyrillic, Greek, CJK and accented text
all score 0; :class:`UnicodeTokenizer` keeps every script. Scores are F-measures averaged exactly
over items (not the unseeded bootstrap median that HF ``evaluate``'s rouge reports).

BLEU and chrF are corpus metrics. Each item keeps its sacrebleu sufficient statistics so a resample
of items can recompute the corpus score, which is what the paired bootstrap needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu import BLEU, CHRF

from services.evaluator import stats
from services.evaluator.metrics.task import words

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TOKENIZER_NAME = "loraplex-unicode-v1"


class UnicodeTokenizer:
    """rouge_score tokenizer: casefolded Unicode words, CJK characters split, optional stemming.

    The Porter stemmer only applies to ASCII words; stemming other scripts with it would be wrong.
    """

    def __init__(self, use_stemmer: bool = False) -> None:
        self.use_stemmer = use_stemmer
        self._stemmer: Any = None
        if use_stemmer:
            from nltk.stem import porter

            self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        tokens = words(text)
        if self._stemmer is not None:
            tokens = [self._stemmer.stem(t) if t.isascii() and len(t) > 3 else t for t in tokens]
        return tokens


@dataclass(frozen=True)
class RougeSettings:
    use_stemmer: bool = False
    tokenizer: str = TOKENIZER_NAME

    def describe(self) -> dict[str, Any]:
        return {
            "library": f"rouge_score {version('rouge-score')}",
            "rouge_types": list(ROUGE_TYPES),
            "use_stemmer": self.use_stemmer,
            "tokenizer": self.tokenizer,
            "score": "fmeasure",
            "aggregate": "mean over items",
        }


@cache
def _scorer(use_stemmer: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(
        list(ROUGE_TYPES), tokenizer=UnicodeTokenizer(use_stemmer=use_stemmer)
    )


def rouge_item(prediction: str, reference: str, use_stemmer: bool = False) -> dict[str, float]:
    scores = _scorer(use_stemmer).score(reference, prediction)
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def rouge(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = False
) -> dict[str, float]:
    _check_lengths(predictions, references)
    per_item = [rouge_item(p, r, use_stemmer) for p, r in zip(predictions, references, strict=True)]
    return {
        name: float(np.mean([s[name] for s in per_item])) if per_item else float("nan")
        for name in ROUGE_TYPES
    }


# ---------------------------------------------------------------------------------------------
# sacrebleu


@cache
def _bleu() -> BLEU:
    return BLEU()


@cache
def _chrf() -> CHRF:
    return CHRF()


def bleu_signature() -> str:
    return str(_bleu().get_signature())


def chrf_signature() -> str:
    return str(_chrf().get_signature())


def bleu_item_stats(prediction: str, reference: str) -> list[float]:
    return [float(x) for x in _bleu()._extract_corpus_statistics([prediction], [[reference]])[0]]


def chrf_item_stats(prediction: str, reference: str) -> list[float]:
    return [float(x) for x in _chrf()._extract_corpus_statistics([prediction], [[reference]])[0]]


def bleu_from_stats(rows: np.ndarray) -> float:
    totals = [round(float(x)) for x in np.asarray(rows).sum(axis=0)]
    return float(_bleu()._compute_score_from_stats(totals).score)


def chrf_from_stats(rows: np.ndarray) -> float:
    totals = [round(float(x)) for x in np.asarray(rows).sum(axis=0)]
    return float(_chrf()._compute_score_from_stats(totals).score)


def _batched(fn: Any) -> stats.Statistic:
    def statistic(values: stats.FloatArray) -> stats.FloatArray:
        return np.array([fn(sample) for sample in values], dtype=np.float64)

    statistic.__name__ = fn.__name__
    return statistic


stats.register_statistic("bleu", _batched(bleu_from_stats))
stats.register_statistic("chrf", _batched(chrf_from_stats))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    _check_lengths(predictions, references)
    return float(_bleu().corpus_score(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    _check_lengths(predictions, references)
    return float(_chrf().corpus_score(list(predictions), [list(references)]).score)


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up"
        )
