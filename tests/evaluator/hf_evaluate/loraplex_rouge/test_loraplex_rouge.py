"""The shipped ROUGE evaluate module gives the evaluator's own numbers: the mean of per-item
F-measures, stemmer setting honoured and recorded."""

from __future__ import annotations

import pytest

from services.evaluator import hf_evaluate
from services.evaluator.metrics import overlap

PREDICTIONS = ["the cats are running home", "Привет мир как дела"]
REFERENCES = ["the cat runs home", "Привет мир"]


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_compute_is_the_mean_of_item_scores(
    monkeypatch: pytest.MonkeyPatch, use_stemmer: bool
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    out = hf_evaluate.load("rouge").compute(
        predictions=PREDICTIONS, references=REFERENCES, use_stemmer=use_stemmer
    )
    items = [
        overlap.rouge_item(p, r, use_stemmer) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)
    ]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert out[name] == pytest.approx(sum(i[name] for i in items) / len(items))
    assert out["settings"]["use_stemmer"] is use_stemmer
