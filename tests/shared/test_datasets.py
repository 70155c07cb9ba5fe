"""Dataset loading, format detection, cleaning, de-duplication and splitting (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.datasets import clean_text, load_examples, near_duplicates, parse_file, split_validation
from shared.datasets.prepare import drop_exact_duplicates
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


def test_json_and_csv_files(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps([CHAT, {"prompt": "a", "completion": "b"}]))
    assert len(load_examples(tmp_path / "d.json").examples) == 2
    (tmp_path / "d.csv").write_text(
        'prompt,completion\n"multi\nline question",answer\nplain,"with, comma"\n'
    )
    loaded = load_examples(tmp_path / "d.csv")
    assert [e.messages[0].content for e in loaded.examples] == ["multi\nline question", "plain"]
    assert loaded.examples[1].location.line == 4  # the quoted newline occupies line 3
    (tmp_path / "bad.csv").write_text("prompt,completion\nonly prompt,\n")
    with pytest.raises(
        ValidationError, match=r"bad.csv line 2: (`completion` is missing|missing field)"
    ):
        load_examples(tmp_path / "bad.csv")


def test_cleaning_strips_html_and_controls_but_keeps_code_and_json() -> None:
    assert clean_text("Hello<br>world &amp; <b>you</b>\x00\x07 ") == "Hello\nworld & you"
    assert clean_text("a\u200bb  \r\n\r\n\r\n\r\nc\u00a0d  e") == "ab\n\nc d  e"
    code = 'def f():\n    return {"a": [1, 2]}  # List<int> <|im_end|>'
    assert clean_text(code) == code
    assert clean_text("<div class='x'>text</div><!-- note -->") == "text"


HTML_ROWS = [
    # The user's HTML is not a target: cleaned, not counted.
    {
        "messages": [
            {"role": "user", "content": "<b>Make</b> a list"},
            {"role": "assistant", "content": "<ul><li>one</li><li>two</li></ul>"},
        ]
    },
    {"prompt": "Escape it", "completion": "Tom &amp; Jerry"},
    {"instruction": "Say hi", "output": "hi\x07 there"},
    {
        "messages": [
            {"role": "user", "content": "plain"},
            {"role": "assistant", "content": "plain answer"},
        ]
    },
]


def test_cleaning_counts_what_it_changed_in_assistant_targets() -> None:
    data = "\n".join(json.dumps(r) for r in HTML_ROWS).encode()
    loaded, problems = parse_file(data, "h.jsonl")
    assert not problems
    report = loaded.cleaning
    assert report["keep_markup"] is False
    assert report["assistant_targets"] == 4
    assert report["assistant_targets_changed"] == 3
    # The list items' tags become line breaks, and the leading one is then trimmed: whitespace too.
    assert report["by_kind"] == {
        "html_markup": 1,
        "html_entities": 1,
        "control_chars": 1,
        "whitespace": 1,
    }
    assert report["examples"][0] == "h.jsonl line 1 `messages[1].content` (html_markup, whitespace)"
    assert loaded.examples[0].messages[-1].content == "one\ntwo"


def test_keep_markup_keeps_html_in_every_field_and_counts_no_markup_change() -> None:
    data = "\n".join(json.dumps(r) for r in HTML_ROWS).encode()
    loaded, problems = parse_file(data, "h.jsonl", keep_markup=True)
    assert not problems
    assert loaded.examples[0].messages[-1].content == "<ul><li>one</li><li>two</li></ul>"
    assert loaded.examples[0].messages[0].content == "<b>Make</b> a list"
    assert loaded.examples[1].messages[-1].content == "Tom &amp; Jerry"
    # Control characters are never an output format: still removed, still counted.
    assert loaded.examples[2].messages[-1].content == "hi there"
    assert loaded.cleaning["keep_markup"] is True
    assert loaded.cleaning["by_kind"] == {"control_chars": 1}
    assert clean_text("<p>a &lt; b</p>\r\n", keep_markup=True) == "<p>a &lt; b</p>"


def test_exact_duplicates_dropped_and_near_duplicates_reported() -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"order {i} of the blue shirts please now"},
                {"role": "assistant", "content": "ok"},
            ]
        }
        for i in range(3)
    ]
    rows.append(rows[0])
    loaded, _ = parse_file(jsonl(*rows), "d.jsonl")
    dedup = drop_exact_duplicates(loaded.examples)
    assert len(dedup.kept) == 3
    assert dedup.duplicates == [("d.jsonl:4", "d.jsonl:1")]
    pairs = near_duplicates(
        [
            "the quick brown fox jumps over the lazy dog today",
            "the quick brown fox jumps over the lazy dog today!",
            "completely different words here for sure",
        ],
        threshold=0.8,
    )
    assert [(p.a, p.b) for p in pairs] == [(0, 1)]


def test_validation_split_is_seeded_and_keeps_groups_together() -> None:
    loaded, _ = parse_file(
        jsonl(*[{"prompt": f"question number {i}", "completion": "a"} for i in range(50)]),
        "d.jsonl",
    )
    ex = loaded.examples
    train1, val1 = split_validation(ex, 0.1, seed=1)
    _, val2 = split_validation(ex, 0.1, seed=1)
    _, val3 = split_validation(ex, 0.1, seed=2)
    assert [e.id for e in val1] == [e.id for e in val2] and len(val1) == 5
    assert {e.id for e in val1} != {e.id for e in val3}
    assert not {e.id for e in train1} & {e.id for e in val1}
    groups = [i // 10 for i in range(50)]  # five clusters of ten
    train, val = split_validation(ex, 0.1, seed=3, groups=groups)
    val_groups = {groups[ex.index(e)] for e in val}
    assert all(groups[ex.index(e)] not in val_groups for e in train)
