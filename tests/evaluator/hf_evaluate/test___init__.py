"""The shipped Hugging Face evaluate modules load from local files (offline)."""

from __future__ import annotations

import pytest

from services.evaluator.metrics import overlap


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
