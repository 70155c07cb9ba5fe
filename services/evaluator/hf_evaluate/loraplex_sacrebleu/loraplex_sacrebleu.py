"""Corpus BLEU and chrF (sacrebleu) as a Hugging Face ``evaluate`` module, loaded from this file.

    evaluate.load("services/evaluator/hf_evaluate/loraplex_sacrebleu")  # or hf_evaluate.load(...)

Returns both scores (0-100) with their sacrebleu signatures, so results are reproducible.
"""

import datasets
import evaluate

from services.evaluator.metrics import overlap

_DESCRIPTION = "sacrebleu corpus BLEU and chrF with signatures; one reference per prediction."
_KWARGS = """
predictions: list of str. references: list of str.
Returns bleu, chrf (0-100), bleu_signature, chrf_signature.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class LoraplexSacrebleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, 2018. A Call for Clarity in Reporting BLEU Scores.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):  # type: ignore[no-untyped-def]
        return {
            "bleu": overlap.bleu(predictions, references),
            "chrf": overlap.chrf(predictions, references),
            "bleu_signature": overlap.bleu_signature(),
            "chrf_signature": overlap.chrf_signature(),
        }
