"""ROUGE-1/2/L as a Hugging Face ``evaluate`` module, loaded from this file (no hub).

    evaluate.load("services/evaluator/hf_evaluate/loraplex_rouge")  # or hf_evaluate.load("rouge")

Same numbers as ``services.evaluator.metrics.overlap.rouge``: exact mean of per-item F-measures
with a tokenizer that keeps non-Latin scripts, instead of the hub module's bootstrap median.
"""

import datasets
import evaluate

from services.evaluator.metrics import overlap

_DESCRIPTION = "ROUGE-1/2/L F-measure (rouge_score) with a Unicode tokenizer; mean over items."
_KWARGS = """
predictions: list of str. references: list of str. use_stemmer: bool (default False).
Returns rouge1, rouge2, rougeL (0-1) and `settings` describing the computation.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class LoraplexRouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_stemmer=False):  # type: ignore[no-untyped-def]
        scores = overlap.rouge(predictions, references, use_stemmer=use_stemmer)
        settings = overlap.RougeSettings(use_stemmer=use_stemmer).describe()
        return {**scores, "settings": settings}
