"""PII in the data a recipe trains on (``shared.datasets.prepare`` with ``pii=``): ``redact``
trains on placeholders, ``refuse`` fails validation naming file, line, field and kind, ``report``
lists them and trains on the text as it is; the split does not move when redacting; findings name
each record format's own fields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.basemodel import ResolvedBaseModel
from shared.datasets import ChatRenderer, parse_file, prepare
from shared.datasets.pii import example_fields, scan_examples

EMAIL = "jane.doe@gmail.com"
PHONE = "+44 20 7946 0958"


@pytest.fixture(scope="module")
def renderer(base_model: ResolvedBaseModel) -> ChatRenderer:
    from transformers import AutoTokenizer

    return ChatRenderer(AutoTokenizer.from_pretrained(base_model.path))


def load(rows: list[dict[str, Any]], name: str = "d.jsonl") -> Any:
    loaded, problems = parse_file("\n".join(json.dumps(r) for r in rows).encode(), name)
    assert not problems, problems.items
    return loaded


def chat(i: int, user: str = "", assistant: str = "") -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": user or f"Convert {i} red mugs to JSON."},
            {"role": "assistant", "content": assistant or json.dumps({"item": "mug", "n": i})},
        ]
    }


ROWS = [chat(i) for i in range(10)]
ROWS[3] = chat(3, user=f"Mail the invoice to {EMAIL}.")
ROWS[6] = chat(6, assistant=f"Call us on {PHONE}.")


def trained_text(data: Any) -> str:
    return "\n".join(e.text() for e in [*data.train, *data.validation])


def test_redact_trains_on_placeholders_and_keeps_the_split(renderer: ChatRenderer) -> None:
    plain = prepare(load(ROWS), None, renderer, kind="sft", seed=3, validation_fraction=0.2)
    data = prepare(
        load(ROWS), None, renderer, kind="sft", seed=3, validation_fraction=0.2, pii="redact"
    )
    assert not data.errors
    text = trained_text(data)
    assert EMAIL not in text and PHONE not in text
    assert "[EMAIL]" in text and "[PHONE]" in text
    rendered = "\n".join(renderer.tokenizer.decode(r.input_ids) for r in data.train_rendered)
    assert EMAIL not in rendered and PHONE not in rendered
    assert [e.id for e in data.train] == [e.id for e in plain.train]
    assert [e.id for e in data.validation] == [e.id for e in plain.validation]
    assert data.report["pii"]["count"] == 2 and data.report["pii"]["action"] == "redact"
    assert any("replaced by placeholders" in w for w in data.report["warnings"])
    # Control: without redaction the PII is what the model trains on.
    assert EMAIL in trained_text(plain) and PHONE in trained_text(plain)


def test_refuse_fails_validation_naming_file_line_field_and_kind(renderer: ChatRenderer) -> None:
    data = prepare(load(ROWS, "train.jsonl"), None, renderer, kind="sft", pii="refuse")
    assert data.errors == [
        "train.jsonl line 4, field `messages[0].content`: email: PII, and data.pii is 'refuse'",
        "train.jsonl line 7, field `messages[1].content`: phone: PII, and data.pii is 'refuse'",
    ]
    with pytest.raises(Exception, match="semantic validation"):
        data.raise_for_errors()
    # Control: a clean file passes.
    clean = prepare(load([chat(i) for i in range(10)]), None, renderer, kind="sft", pii="refuse")
    assert clean.errors == [] and clean.report["pii"]["count"] == 0


def test_report_lists_findings_without_the_pii_and_trains_on_the_text(
    renderer: ChatRenderer,
) -> None:
    data = prepare(load(ROWS, "train.jsonl"), None, renderer, kind="sft", pii="report")
    section = data.report["pii"]
    assert section["kinds"] == {"email": 1, "phone": 1} and section["examples"] == 2
    assert {(f["line"], f["field"], f["kind"]) for f in section["findings"]} == {
        (4, "messages[0].content", "email"),
        (7, "messages[1].content", "phone"),
    }
    assert EMAIL not in json.dumps(data.report) and PHONE not in json.dumps(data.report)
    assert any("trained on as they are" in w for w in data.report["warnings"])
    assert EMAIL in trained_text(data)
    # No pii argument: no scan, no section (the evaluator's own calls).
    assert "pii" not in prepare(load(ROWS), None, renderer, kind="sft").report


def test_findings_name_the_fields_of_each_record_format() -> None:
    rows = [
        {"prompt": f"write to {EMAIL}", "completion": "ok"},
        {"instruction": "Summarise", "input": f"call {PHONE}", "output": "done", "system": "s"},
        {"prompt": "hi", "chosen": f"mail {EMAIL}", "rejected": "no"},
        {
            "input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": f"call {PHONE}"}],
        },
    ]
    found = []
    for row in rows:
        loaded, problems = parse_file(json.dumps(row).encode(), "f.jsonl")
        assert not problems, problems.items
        found += [(f.field, f.kind) for f in scan_examples(loaded.examples)]
        (example,) = loaded.examples
        texts = [m.content for m in example.messages] + [
            t for t in (example.chosen, example.rejected) if t is not None
        ]
        assert len(example_fields(example)) == len(texts)
    assert found == [
        ("prompt", "email"),
        ("instruction/input", "phone"),
        ("chosen", "email"),
        ("non_preferred_output", "phone"),
    ]
