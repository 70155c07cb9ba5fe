"""`shared.datasets.cleaning`: markup and control characters stripped from text, code and JSON kept,
and what cleaning changed counted."""

from __future__ import annotations

import json

from shared.datasets import clean_text, parse_file


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
