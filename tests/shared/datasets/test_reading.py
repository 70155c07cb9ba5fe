"""`shared.datasets.reading`: file formats told apart, JSON and CSV files read, problems collected in
file order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.datasets import load_examples
from shared.datasets.reading import Problems, detect_file_format, read_records
from shared.datasets.records import Location
from shared.errors import ValidationError
from tests.shared.datasets.test_loading import CHAT


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


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("a.jsonl", b"", "jsonl"),
        ("a.ndjson", b"", "jsonl"),
        ("a.JSON", b"{", "json"),
        ("a.csv", b"[", "csv"),
        ("upload", b"\xef\xbb\xbf  [{", "json"),
        ("upload", b"\n{", "jsonl"),
        ("upload", b"prompt,completion", "csv"),
    ],
)
def test_the_format_comes_from_the_suffix_else_the_first_bytes(
    name: str, head: bytes, expected: str
) -> None:
    assert detect_file_format(name, head) == expected


def test_problems_are_listed_in_file_order_and_raised_together() -> None:
    problems = Problems()
    assert not problems
    problems.add(Location("t.jsonl", 5), "late")
    problems.add(Location("t.jsonl", 2), "early")
    problems.add("t.jsonl", "whole file")
    assert problems.items == [
        "t.jsonl: whole file",
        "t.jsonl line 2: early",
        "t.jsonl line 5: late",
    ]
    with pytest.raises(ValidationError, match=r"t\.jsonl has 3 problems; first: t\.jsonl: whole"):
        problems.raise_if_any("t.jsonl")


def test_text_that_is_not_utf8_is_a_problem_on_its_line() -> None:
    problems = Problems()
    file_format, records = read_records(b'{"a": 1}\n{"b": "\xff"}\n', "t.jsonl", problems)
    assert (file_format, records) == ("jsonl", [])
    assert problems.items == ["t.jsonl line 2: not valid UTF-8 text (byte 16)"]
