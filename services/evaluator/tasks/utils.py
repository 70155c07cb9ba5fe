"""Per-document scoring for the shipped lm-eval tasks (``!function utils.<name>`` in the YAMLs).

Uses the evaluator's own metric functions, so lm-eval and ``loraplex eval`` score the same way,
and never falls back to ``evaluate.load`` (which needs the hub).
"""

from __future__ import annotations

from typing import Any

from services.evaluator.metrics import task


def process_results_gen(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    pred = results[0].strip()
    ref = doc["reference"]
    return {
        "exact_match": task.exact_match(pred, ref),
        "json_match": task.json_match(pred, ref),
        "json_valid": task.json_valid(pred),
    }
