"""`shared.datasets.records`: an example's kind, its duplicate key, its text and its canonical record."""

from __future__ import annotations

from shared.datasets.records import Example, Location, Message

HERE = Location("d.jsonl", 3)
TURNS = (
    Message("user", "hi"),
    Message("assistant", "draft", train=False),
    Message("user", "again"),
)


def test_a_location_names_its_source_unit_and_number() -> None:
    assert str(HERE) == "d.jsonl line 3"
    assert str(Location("d.json", 2, unit="record")) == "d.json record 2"


def test_equal_content_gives_equal_keys_wherever_it_is() -> None:
    a = Example("a", HERE, "chat", TURNS)
    b = Example("b", Location("other.jsonl", 9), "prompt_completion", TURNS)
    assert a.content_key() == b.content_key()
    # The loss weight is part of what the model sees.
    unweighted = tuple(Message(m.role, m.content) for m in TURNS)
    assert Example("c", HERE, "chat", unweighted).content_key() != a.content_key()


def test_sft_record_keeps_weight_zero_turns_and_preference_record_has_both_answers() -> None:
    sft = Example("a", HERE, "chat", TURNS)
    assert sft.kind == "sft"
    assert sft.to_record() == {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "draft", "weight": 0},
            {"role": "user", "content": "again"},
        ]
    }
    pref = Example("p", HERE, "preference", (Message("user", "q"),), chosen="yes", rejected="no")
    assert pref.kind == "preference"
    assert pref.to_record() == {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": "yes",
        "rejected": "no",
    }
    assert pref.text() == "q\nyes\nno"
