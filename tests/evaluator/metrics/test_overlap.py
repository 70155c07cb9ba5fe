"""Overlap metrics: ROUGE with our Unicode tokenizer, BLEU and chrF from per-item statistics."""

from __future__ import annotations

import pytest

from services.evaluator.metrics import overlap


def test_rouge_does_not_zero_non_latin_text() -> None:
    scores = overlap.rouge_item("Привет мир как дела", "Привет мир")
    assert scores["rouge1"] == pytest.approx(2 / 3)
    # rouge_score's default tokenizer would give 0 here; ours must not.
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rouge1"]).score("Привет мир", "Привет мир как дела")
    assert default["rouge1"].fmeasure == 0.0


def test_rouge_stemmer_setting_changes_the_score() -> None:
    plain = overlap.rouge_item("the cats are running", "the cat runs")
    stemmed = overlap.rouge_item("the cats are running", "the cat runs", use_stemmer=True)
    assert stemmed["rouge1"] > plain["rouge1"]
    assert overlap.RougeSettings(use_stemmer=True).describe()["use_stemmer"] is True


def test_bleu_chrf_match_sacrebleu_corpus_scores_and_record_signatures() -> None:
    import numpy as np

    hyps = ["the cat sat on the mat", "a quick brown dog", "hello world"]
    refs = ["the cat sat on a mat", "the quick brown fox", "hello there world"]
    bleu_stats = np.array([overlap.bleu_item_stats(h, r) for h, r in zip(hyps, refs, strict=True)])
    chrf_stats = np.array([overlap.chrf_item_stats(h, r) for h, r in zip(hyps, refs, strict=True)])
    assert overlap.bleu_from_stats(bleu_stats) == pytest.approx(overlap.bleu(hyps, refs))
    assert overlap.chrf_from_stats(chrf_stats) == pytest.approx(overlap.chrf(hyps, refs))
    assert "tok:13a" in overlap.bleu_signature() and "version:" in overlap.chrf_signature()
    with pytest.raises(ValueError, match="pair up"):
        overlap.bleu(["a"], ["a", "b"])
