"""Evaluation items from a data file: every accepted shape, the item ids and hashes, and every
problem reported with its line before any model loads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from services.evaluator.data import EvalData, EvalItem, load_data, parse_items
from shared.datasets.records import Message
from shared.errors import NotFoundError, ValidationError


def jsonl(*rows: Any) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def chat(user: str, answer: str | None = None, **extra: Any) -> dict[str, Any]:
    msgs = [{"role": "user", "content": user}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return {"messages": msgs, **extra}


def test_each_accepted_shape_gives_a_prompt_and_a_reference() -> None:
    items = parse_items(
        jsonl(
            chat("q1", "a1", id="first"),
            chat("q2", expected={"k": "é"}),  # held-out shape: the reference in a field
            {"prompt": "q3", "completion": "a3"},
            {"prompt": "q4", "chosen": "good", "rejected": "bad"},
            {"text": "plain text only"},
        ),
        "d.jsonl",
    )
    assert [i.item_id for i in items] == [
        "first",
        "line-2",
        "line-3",
        "line-4",
        "line-5",
    ]
    assert [i.reference for i in items] == ["a1", '{"k": "é"}', "a3", "good", "plain text only"]
    assert [i.prompt_text for i in items[:4]] == ["q1", "q2", "q3", "q4"]
    assert items[0].messages == (Message("user", "q1"),)
    assert items[3].rejected == "bad" and items[0].rejected is None
    assert [i.is_text for i in items] == [False, False, False, False, True]
    assert items[0].location == "d.jsonl line 1" and items[0].raw["id"] == "first"


def test_custom_field_names_map_onto_prompt_and_reference() -> None:
    data = jsonl(
        {"question": "2+2?", "answer": 4}, {"question": "", "answer": "x"}, {"question": "q"}
    )
    with pytest.raises(ValidationError) as err:
        parse_items(data, "d.jsonl", prompt_field="question", reference_field="answer")
    assert err.value.details == [
        "d.jsonl line 2: missing prompt field `question`",
        "d.jsonl line 3: missing reference field `answer`",
    ]
    (item,) = parse_items(
        data[: data.index(b"\n") + 1], "d.jsonl", prompt_field="question", reference_field="answer"
    )
    assert item.prompt_text == "2+2?" and item.reference == "4"


def test_every_problem_is_reported_at_once_with_its_line() -> None:
    data = jsonl(
        chat("q1", "a1", id="x"),
        chat("q2", "a2", id="x"),
        chat("q3"),
        {"prompt": "q4"},
        {"text": "   "},
    )
    with pytest.raises(ValidationError) as err:
        parse_items(data, "d.jsonl")
    details = "\n".join(err.value.details)
    assert "d.jsonl line 2: duplicate item id 'x' (first at d.jsonl line 1)" in details
    assert "d.jsonl line 3: missing reference: end `messages` with the assistant's" in details
    assert "d.jsonl line 4: missing reference field `completion`" in details
    assert "d.jsonl line 5: `text` is empty" in details
    with pytest.raises(ValidationError, match="evaluation data"):
        parse_items(b"", "empty.jsonl")


def test_limit_keeps_the_first_items() -> None:
    data = jsonl(*(chat(f"q{k}", f"a{k}") for k in range(5)))
    assert [i.prompt_text for i in parse_items(data, "d.jsonl", limit=2)] == ["q0", "q1"]


def test_item_hash_follows_prompt_and_reference_only() -> None:
    one = EvalItem("a", (Message("user", "q"),), "r", "x:1")
    assert one.item_hash == EvalItem("b", (Message("user", "q"),), "r", "y:9").item_hash
    assert one.item_hash != EvalItem("a", (Message("user", "q"),), "r2", "x:1").item_hash
    assert one.item_hash != EvalItem("a", (Message("system", "q"),), "r", "x:1").item_hash
    assert one.prompt_dicts() == [{"role": "user", "content": "q"}]
    sys_and_user = EvalItem("c", (Message("system", "s"), Message("user", "u")), "r", "x:2")
    assert sys_and_user.prompt_text == "u"


def test_load_data_hashes_the_file_and_describes_it(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_bytes(jsonl(chat("q1", "a1"), {"text": "t"}))
    data = load_data(path)
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.describe()["n_items"] == 2 and data.describe()["source"] == str(path)
    assert not data.has_prompts  # one plain-text row: only perplexity can use the file
    assert EvalData("s", "0", data.items[:1]).has_prompts
    assert load_data(path, source="named.jsonl").items[0].location == "named.jsonl line 1"
    with pytest.raises(NotFoundError, match="does not exist"):
        load_data(tmp_path / "missing.jsonl")
