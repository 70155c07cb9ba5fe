"""`shared.datasets.loading`: every format converted to one internal form, and every problem named
with its file, line and field (no model needed)."""

from __future__ import annotations

import json

import pytest

from shared.datasets import parse_file
from shared.errors import ValidationError


def jsonl(*rows: object) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_every_format_converts_to_one_internal_form() -> None:
    data = jsonl(
        CHAT,
        {"prompt": "p", "completion": "c"},
        {"instruction": "do", "input": "this", "output": "done", "system": "be brief"},
        {
            "prompt": [{"role": "user", "content": "q"}],
            "completion": [{"role": "assistant", "content": "a"}],
        },
    )
    loaded, problems = parse_file(data, "mixed.jsonl")
    assert not problems
    assert [e.format for e in loaded.examples] == [
        "chat",
        "prompt_completion",
        "alpaca",
        "prompt_completion",
    ]
    assert loaded.kind == "sft"
    alpaca = loaded.examples[2]
    assert [(m.role, m.content) for m in alpaca.messages] == [
        ("system", "be brief"),
        ("user", "do\n\nthis"),
        ("assistant", "done"),
    ]
    assert loaded.examples[1].messages[-1].role == "assistant"


def test_preference_formats() -> None:
    data = jsonl(
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {
            "input": {"messages": [{"role": "user", "content": "q2"}]},
            "preferred_output": [{"role": "assistant", "content": "yes"}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        },
        {  # implicit prompt: shared leading turns of two whole conversations
            "chosen": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "A"}],
            "rejected": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "B"}],
        },
    )
    loaded, problems = parse_file(data, "pref.jsonl")
    assert not problems, problems.items
    assert loaded.kind == "preference"
    assert [(e.messages[-1].content, e.chosen, e.rejected) for e in loaded.examples] == [
        ("q", "good", "bad"),
        ("q2", "yes", "no"),
        ("q3", "A", "B"),
    ]


def test_errors_name_file_line_and_field_and_list_every_problem() -> None:
    data = jsonl(
        CHAT,
        "{not json",
        {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
        {"prompt": "only a prompt"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
    )
    with pytest.raises(ValidationError) as info:
        _, problems = parse_file(data, "train.jsonl")
        problems.raise_if_any("data file train.jsonl", param="train.jsonl")
    details = info.value.details
    assert details[0].startswith("train.jsonl line 2: invalid JSON")
    assert (
        "train.jsonl line 3: `messages[1].role` must be one of user, assistant, system; got 'bot'"
        in details
    )
    assert "train.jsonl line 4: `messages[1].content` is empty" in details
    assert "train.jsonl line 5: missing field `completion`" in details
    assert any(d.startswith("train.jsonl line 6:") and "identical" in d for d in details)
    assert len([d for d in details if "line" in d]) >= 5
    assert "5 problems" in info.value.message or "problems" in info.value.message


def test_structural_conversation_rules() -> None:
    data = jsonl(
        {"messages": [{"role": "assistant", "content": "first"}]},
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "late"},
                {"role": "assistant", "content": "a"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "weight": 0},
            ]
        },
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
        {"messages": "not a list"},
    )
    _, problems = parse_file(data, "t.jsonl")
    text = "\n".join(problems.items)
    assert (
        "line 1: `messages` has no assistant message" not in text
    )  # it has one, but no user first
    assert "line 1: `messages[0]`: the first assistant message needs a user message" in text
    assert "line 2: `messages[1]`: a system message may only come first" in text
    assert "line 3: `messages`: every assistant message has weight 0" in text
    assert "line 4: `messages[0].content` must be a string; got number" in text
    assert "line 5: `messages` must be a list of messages; got string" in text
