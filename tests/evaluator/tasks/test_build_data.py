"""The shipped lm-eval tasks' data file: one row per example test item, its prompt rendered by the
base model's chat template (a fake tokenizer and renderer here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.evaluator.data import load_data
from services.evaluator.tasks import build_data


class Renderer:
    def __init__(self, tokenizer: Any) -> None:
        assert tokenizer == "tokenizer of /models/m"

    def text(self, messages: list[Any], *, add_generation_prompt: bool) -> str:
        turns = "".join(f"<{m.role}>{m.content}</{m.role}>" for m in messages)
        return turns + ("<assistant>" if add_generation_prompt else "")


def test_build_writes_one_rendered_row_per_test_item(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import transformers

    import shared.datasets.render

    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda path: f"tokenizer of {path}"
    )
    monkeypatch.setattr(shared.datasets.render, "ChatRenderer", Renderer)
    out = build_data.build(Path("/models/m"), tmp_path / "data" / "out.jsonl")
    assert out == tmp_path / "data" / "out.jsonl"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    items = load_data(build_data.EXAMPLE).items
    assert [r["id"] for r in rows] == [i.item_id for i in items]
    assert [r["reference"] for r in rows] == [i.reference for i in items]
    first = items[0]
    assert rows[0]["prompt"] == Renderer("tokenizer of /models/m").text(
        list(first.messages), add_generation_prompt=True
    )
    assert rows[0]["prompt"].endswith("<assistant>") and first.prompt_text in rows[0]["prompt"]
