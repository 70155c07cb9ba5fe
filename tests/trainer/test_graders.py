"""Declarative graders: each kind scores one completion for one row in [0, 1], templates only
substitute, and a grader that names a field some row lacks is refused naming file, line and field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticError

from services.trainer.graders import (
    Grader,
    check_item_fields,
    grade,
    parse_json_output,
    render,
    sigmoid,
    template_fields,
)
from shared.errors import ValidationError

GRADER: TypeAdapter[Any] = TypeAdapter(Grader)


def make(**data: Any) -> Any:
    return GRADER.validate_python(data)


def check(operation: str, reference: str = "{{item.answer}}") -> Any:
    return make(type="string_check", reference=reference, operation=operation)


@pytest.mark.parametrize(
    ("operation", "output", "expected"),
    [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "Paris", 0.0),
        ("ne", "Lyon", 1.0),
        ("like", "It is Paris.", 1.0),
        ("like", "It is paris.", 0.0),
        ("ilike", "It is PARIS.", 1.0),
        ("ilike", "It is Lyon.", 0.0),
    ],
)
def test_string_check_operations(operation: str, output: str, expected: float) -> None:
    assert grade(check(operation), output, {"answer": "Paris"}) == expected


def test_templates_substitute_the_sample_and_item_fields_only() -> None:
    item = {"city": "Paris", "n": 3, "obj": {"b": 1, "a": 2}}
    text = "{{ sample.output_text }}|{{item.city}}|{{item.n}}|{{item.obj}}"
    assert render(text, "out", item) == 'out|Paris|3|{"a": 2, "b": 1}'
    assert template_fields(text) == {"city", "n", "obj"}
    for bad in ("{{item.city.upper()}}", "{{ item.n + 1 }}", "{{sample.text}}", "{{__import__}}"):
        with pytest.raises(ValueError, match="is not allowed"):
            template_fields(bad)
    with pytest.raises(PydanticError, match="is not allowed"):
        make(type="string_check", reference="{{ item.a | upper }}", operation="eq")


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "rouge_1", "rouge_l"])
def test_text_similarity_is_one_for_equal_text_and_lower_for_other_text(metric: str) -> None:
    grader = make(type="text_similarity", reference="{{item.ref}}", evaluation_metric=metric)
    item = {"ref": "the cat sat on the mat today"}
    same = grade(grader, "the cat sat on the mat today", item)
    close = grade(grader, "the cat sat on a mat today", item)
    far = grade(grader, "quantum chromodynamics", item)
    assert same == pytest.approx(1.0)
    assert 0.0 <= far < close < same


def test_text_similarity_values() -> None:
    item = {"ref": "the cat sat on the mat"}

    def score(metric: str) -> float:
        grader = make(type="text_similarity", reference="{{item.ref}}", evaluation_metric=metric)
        return grade(grader, "the cat sat on a mat", item)

    assert score("fuzzy_match") == pytest.approx(0.9047619, abs=1e-6)  # difflib's ratio
    assert score("rouge_1") == pytest.approx(5 / 6)  # 5 of 6 unigrams on both sides
    assert score("bleu") == pytest.approx(0.5372850, abs=1e-6)  # sacrebleu / 100


def test_json_match_scores_the_share_of_reference_keys() -> None:
    grader = make(type="json_match", reference="{{item.expected}}")
    item = {"expected": {"name": "Ada", "year": 1843}}
    assert grade(grader, '{"name": "Ada", "year": 1843}', item) == 1.0
    assert grade(grader, '```json\n{"name": "Ada", "year": 1842}\n```', item) == 0.5
    assert grade(grader, '{"name": "Bob"}', item) == 0.0
    assert grade(grader, "not json at all", item) == 0.0
    assert grade(grader, "[1, 2]", item) == 0.0
    assert parse_json_output("```\n[1]\n```") == [1]


def test_multi_is_a_weighted_or_equal_mean() -> None:
    subs = {
        "exact": {"type": "string_check", "reference": "{{item.a}}", "operation": "eq"},
        "near": {"type": "string_check", "reference": "{{item.a}}", "operation": "ilike"},
    }
    item = {"a": "yes"}
    assert grade(make(type="multi", graders=subs), "YES", item) == pytest.approx(0.5)
    weighted = make(type="multi", graders=subs, weights={"exact": 1, "near": 3})
    assert grade(weighted, "YES", item) == pytest.approx(0.75)
    assert weighted.item_fields() == {"a"}
    with pytest.raises(PydanticError, match="weights name"):
        make(type="multi", graders=subs, weights={"exact": 1})


def test_unknown_and_unsupported_grader_types_are_refused_with_a_reason() -> None:
    with pytest.raises(PydanticError, match="does not match any of the expected tags"):
        make(type="python", source="return 1")
    with pytest.raises(PydanticError, match="Extra inputs are not permitted"):
        make(type="score_model", model="rm@v1", input=[])
    with pytest.raises(PydanticError, match="a score_model grader is used alone"):
        make(type="multi", graders={"rm": {"type": "score_model", "model": "rm@v1"}})


def test_a_score_model_grader_names_no_field_and_maps_scores_through_a_sigmoid() -> None:
    grader = make(type="score_model", model="rm@v1")
    assert grader.item_fields() == set()
    with pytest.raises(TypeError, match="scores batches"):
        grade(grader, "text", {})
    assert sigmoid(0.0) == 0.5
    assert sigmoid(2.0) == pytest.approx(0.880797, abs=1e-6)
    assert sigmoid(-2.0) == pytest.approx(1 - 0.880797, abs=1e-6)
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0
    with pytest.raises(PydanticError, match="Extra inputs are not permitted"):
        make(type="string_check", reference="x", operation="eq", code="1")


def test_a_field_missing_in_a_row_is_named_with_its_place() -> None:
    grader = make(
        type="multi",
        graders={
            "a": {"type": "string_check", "reference": "{{item.answer}}", "operation": "eq"},
            "b": {"type": "json_match", "reference": "{{item.expected}}"},
        },
    )
    rows: list[tuple[str, dict[str, Any]]] = [
        ("t.jsonl line 1", {"answer": "x", "expected": {}}),
        ("t.jsonl line 2", {"answer": "y"}),
    ]
    with pytest.raises(ValidationError) as info:
        check_item_fields(grader, rows)
    assert info.value.param == "training_file"
    assert "t.jsonl line 2: missing field `expected`" in info.value.message
    assert info.value.details == [
        "t.jsonl line 2: missing field `expected` (the grader uses {{item.expected}})"
    ]
    check_item_fields(grader, rows[:1])  # complete rows pass
