"""process_results_gen: lm-eval's per-document scoring of the shipped generation task."""

from __future__ import annotations

from services.evaluator.tasks.utils import process_results_gen

REFERENCE = '{"name": "Ada", "age": 36}'


def test_an_answer_is_scored_with_the_evaluators_own_metrics() -> None:
    doc = {"reference": REFERENCE}
    assert process_results_gen(doc, [f"  {REFERENCE}\n"]) == {
        "exact_match": 1.0,
        "json_match": 1.0,
        "json_valid": 1.0,
    }
    # Same JSON in another key order: not an exact match, but the same object.
    assert process_results_gen(doc, ['{"age": 36, "name": "Ada"}']) == {
        "exact_match": 0.0,
        "json_match": 1.0,
        "json_valid": 1.0,
    }
    assert process_results_gen(doc, ["Ada, 36"]) == {
        "exact_match": 0.0,
        "json_match": 0.0,
        "json_valid": 0.0,
    }
