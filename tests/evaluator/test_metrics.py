"""Task and overlap metrics, and the shipped Hugging Face evaluate modules (offline)."""

from __future__ import annotations

import pytest

from services.evaluator.metrics import overlap, task


def test_exact_match_and_accuracy_normalisation() -> None:
    assert task.exact_match("  Paris \n", "Paris") == 1.0
    assert task.exact_match("paris", "Paris") == 0.0  # exact match is case sensitive
    assert task.accuracy("Paris.", "paris") == 1.0


def test_token_f1_squad_style() -> None:
    assert task.token_f1("the cat sat", "the cat") == pytest.approx(0.8)
    assert task.token_f1("", "") == 1.0
    assert task.token_f1("dog", "cat") == 0.0


def test_words_keep_non_latin_scripts() -> None:
    assert task.words("Привет, мир! café") == ["привет", "мир", "café"]
    assert task.words("你好世界") == ["你", "好", "世", "界"]


def test_json_metrics() -> None:
    ref = '{"name": "Ada", "age": 36}'
    assert task.json_valid('```json\n{"a": 1}\n```') == 1.0
    assert task.json_valid("{'a': 1}") == 0.0
    assert task.json_match('{"age": 36, "name": "Ada"}', ref) == 1.0
    assert task.json_match('{"age": 37, "name": "Ada"}', ref) == 0.0
    assert task.schema_match('{"age": 1, "name": "Bob"}', ref) == 1.0
    assert task.schema_match('{"age": "1", "name": "Bob"}', ref) == 0.0
    assert task.schema_match('{"name": "Bob"}', ref) == 0.0
    assert task.schema_match('{"age": 1, "name": "B", "x": 0}', ref) == 0.0
    schema = {"type": "object", "required": ["name"]}
    assert task.schema_match('{"name": "B", "x": 0}', ref, schema=schema) == 1.0


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


def test_evaluate_modules_load_from_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    from services.evaluator import hf_evaluate

    rouge = hf_evaluate.load("rouge")
    out = rouge.compute(predictions=["Привет мир"], references=["Привет мир"])
    assert out["rouge1"] == 1.0 and out["settings"]["tokenizer"] == overlap.TOKENIZER_NAME
    sb = hf_evaluate.load("sacrebleu")
    res = sb.compute(predictions=["the cat sat on the mat"], references=["the cat sat on a mat"])
    assert res["bleu"] == pytest.approx(
        overlap.bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    )
    assert res["bleu_signature"] == overlap.bleu_signature()
    with pytest.raises(KeyError, match="no local evaluate module"):
        hf_evaluate.load("bertscore")
