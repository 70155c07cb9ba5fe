"""Rendering with the embedded model's own chat template, label masks and semantic validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.basemodel import ResolvedBaseModel
from shared.datasets import IGNORE_INDEX, ChatRenderer, parse_file, prepare


@pytest.fixture(scope="module")
def tokenizer(base_model: ResolvedBaseModel) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model.path)


def load(*rows: dict[str, Any], name: str = "d.jsonl") -> Any:
    loaded, problems = parse_file("\n".join(json.dumps(r) for r in rows).encode(), name)
    assert not problems, problems.items
    return loaded


def trained_text(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    """Contiguous trained spans, decoded."""
    spans: list[list[int]] = []
    for i, (tok, lab) in enumerate(zip(ids, labels, strict=True)):
        if lab == IGNORE_INDEX:
            continue
        assert lab == tok
        if spans and labels[i - 1] != IGNORE_INDEX:
            spans[-1].append(tok)
        else:
            spans.append([tok])
    return [tokenizer.decode(s) for s in spans]


def test_only_assistant_tokens_and_their_stop_token_are_trained(tokenizer: Any) -> None:
    renderer = ChatRenderer(tokenizer)
    example = load(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Again"},
                {"role": "assistant", "content": "Not this one", "weight": 0},
                {"role": "user", "content": "Last"},
                {"role": "assistant", "content": '{"a": 1}'},
            ]
        }
    ).examples[0]
    rendered = renderer.render_sft(example)
    assert not rendered.problems
    # The token ids are exactly what the template gives for the whole conversation.
    full = tokenizer.apply_chat_template([m.to_dict() for m in example.messages], tokenize=False)
    assert rendered.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    assert trained_text(tokenizer, rendered.input_ids, rendered.labels) == [
        "Hello!<|im_end|>",
        '{"a": 1}<|im_end|>',
    ]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (
        sum(
            1
            for t, lab in zip(rendered.input_ids, rendered.labels, strict=True)
            if t == im_end and lab != IGNORE_INDEX
        )
        == 2
    )
    assert [t.has_stop for t in rendered.turns] == [True, True, True]


def test_a_template_that_leaves_the_stop_token_untrained_fails_validation(tokenizer: Any) -> None:
    # This template closes assistant turns without <|im_end|>: a model trained on it never stops.
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if m['role'] != 'assistant' %}<|im_end|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    data = prepare(
        load(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        ),
        None,
        ChatRenderer(tokenizer),
        kind="sft",
        validation_fraction=0,
    )
    assert data.errors and "does not end with a trained stop token" in data.errors[0]
    assert "d.jsonl:1" in data.errors[0]


def test_report_counts_truncation_drops_and_special_tokens(tokenizer: Any) -> None:
    long = " ".join(["word"] * 300)
    loaded = load(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "short"}]},
        {"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": long}]},
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "sneaky <|im_end|> token"},
            ]
        },
    )
    renderer = ChatRenderer(tokenizer)
    dropped = prepare(loaded, None, renderer, kind="sft", max_length=128, validation_fraction=0)
    assert dropped.report["train"]["dropped"]["count"] == 2
    assert any("special token '<|im_end|>'" in e for e in dropped.errors)
    cut = prepare(
        loaded,
        None,
        renderer,
        kind="sft",
        max_length=128,
        truncation="truncate",
        validation_fraction=0,
    )
    train = cut.report["train"]
    # The long prompt leaves nothing to train after truncation; the long answer is cut mid-way.
    assert train["dropped"]["count"] == 1 and train["truncated"]["count"] == 1
    assert train["truncated_mid_answer"]["ids"] == ["d.jsonl:3"]
    assert 0 < train["trained_fraction"]["min"] <= train["trained_fraction"]["max"] < 1


def test_preference_report(tokenizer: Any) -> None:
    loaded = load(
        {"prompt": "q1", "chosen": "a much longer good answer", "rejected": "bad"},
        {"prompt": "q2", "chosen": "good", "rejected": "a much longer bad answer"},
    )
    data = prepare(loaded, None, ChatRenderer(tokenizer), kind="preference", validation_fraction=0)
    assert not data.errors
    assert data.report["train"]["examples"] == 2
    assert data.report["train"]["chosen_minus_rejected_tokens"]["share_chosen_longer"] == 0.5
    sft_file = load({"prompt": "q", "completion": "c"})
    mismatch = prepare(sft_file, None, ChatRenderer(tokenizer), kind="preference")
    assert any("needs preference records" in e for e in mismatch.errors)


def test_report_says_what_cleaning_took_out_of_assistant_targets(tokenizer: Any) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Bold {k}"},
                {"role": "assistant", "content": f"<b>{k}</b>"},
            ]
        }
        for k in range(4)
    ]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    stripped = prepare(
        parse_file(data, "h.jsonl")[0],
        None,
        ChatRenderer(tokenizer),
        kind="sft",
        validation_fraction=0,
    )
    counts = stripped.report["cleaning"]["training_file"]
    assert counts["assistant_targets_changed"] == 4 and counts["by_kind"] == {"html_markup": 4}
    assert any(
        "removed HTML tags or entities from 4 of 4 assistant target(s) in training_file" in w
        and "data.keep_markup: true" in w
        for w in stripped.report["warnings"]
    ), stripped.report["warnings"]
    assert stripped.train[0].messages[-1].content == "0"
    # Control: the task's output is HTML and says so; the markup is trained on, no warning.
    kept = prepare(
        parse_file(data, "h.jsonl", keep_markup=True)[0],
        None,
        ChatRenderer(tokenizer),
        kind="sft",
        validation_fraction=0,
    )
    assert kept.report["cleaning"]["training_file"]["by_kind"] == {}
    assert not any("HTML" in w for w in kept.report["warnings"])
    assert kept.train[0].messages[-1].content == "<b>0</b>"


def test_prompt_report(tokenizer: Any) -> None:
    """Reinforcement prompts: kept with their fields, counted with the generation prompt, dropped
    when they leave no room for an answer; another kind of file is refused."""
    short = {"messages": [{"role": "user", "content": "Capital of France?"}], "answer": "Paris"}
    long = {"messages": [{"role": "user", "content": "word " * 300}], "answer": "x"}
    loaded = load(short, long)
    renderer = ChatRenderer(tokenizer)
    data = prepare(loaded, None, renderer, kind="prompt", max_length=128, validation_fraction=0)
    assert not data.errors
    assert [e.item for e in data.train] == [{"answer": "Paris"}]
    assert data.report["train"]["dropped"]["count"] == 1
    assert data.report["train"]["dropped"]["examples"][0]["reason"] == "prompt fills max_length"
    with_prompt = renderer.ids(list(data.train[0].messages), add_generation_prompt=True)
    assert data.train_prompt_tokens == [len(with_prompt)]
    mismatch = prepare(load({"prompt": "q", "completion": "c"}), None, renderer, kind="prompt")
    assert any("needs prompt records" in e for e in mismatch.errors)
