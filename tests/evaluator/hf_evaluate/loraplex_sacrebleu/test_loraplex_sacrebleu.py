"""The shipped sacrebleu evaluate module gives the evaluator's corpus BLEU and chrF, with the
signatures that say how they were computed."""

from __future__ import annotations

import pytest

from services.evaluator import hf_evaluate
from services.evaluator.metrics import overlap

PREDICTIONS = ["the cat sat on the mat", "a quick brown dog", "hello world"]
REFERENCES = ["the cat sat on a mat", "the quick brown fox", "hello there world"]


def test_compute_gives_corpus_bleu_and_chrf_with_signatures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    out = hf_evaluate.load("sacrebleu").compute(predictions=PREDICTIONS, references=REFERENCES)
    assert out["bleu"] == pytest.approx(overlap.bleu(PREDICTIONS, REFERENCES))
    assert out["chrf"] == pytest.approx(overlap.chrf(PREDICTIONS, REFERENCES))
    assert 0 < out["bleu"] < 100 and 0 < out["chrf"] < 100
    assert out["bleu_signature"] == overlap.bleu_signature()
    assert out["chrf_signature"] == overlap.chrf_signature()
