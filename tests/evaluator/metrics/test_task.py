"""Task metrics: exact match, accuracy, token F1 and the JSON metrics."""

from __future__ import annotations

import pytest

from services.evaluator.metrics import task


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
