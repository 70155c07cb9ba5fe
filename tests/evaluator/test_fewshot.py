"""The few-shot base baseline (``base+fewshot:K``): examples drawn from the candidate's training
rows, never from the evaluation set, put before each prompt; a gate against it fails an adapter
that does no better than prompting, where the zero-shot base would have let it through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import yaml

from services.evaluator import fewshot, service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.data import EvalItem
from services.evaluator.policy import parse_policy
from services.evaluator.prepare import prepare
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.subjects import Subject
from shared.artifacts import open_store
from shared.basemodel import ResolvedBaseModel
from shared.datasets.records import Example, Location, Message
from shared.errors import ForbiddenError, ValidationError
from shared.registry import adapters, policies
from shared.registry.db import Registry
from shared.registry.names import parse_fewshot

from .conftest import random_adapter, register_adapter

SYSTEM = "Repeat the word in capital letters."
# Common nouns, one per row: the first 16 train the candidate (and are the few-shot pool), the
# next 36 are evaluated.
WORDS = tuple(
    [
        "apple",
        "river",
        "candle",
        "window",
        "garden",
        "pencil",
        "rabbit",
        "silver",
        "forest",
        "basket",
        "mirror",
        "doctor",
        "ladder",
        "planet",
        "button",
        "castle",
        "pepper",
        "tunnel",
        "wallet",
        "violin",
        "anchor",
        "bottle",
        "carpet",
        "dragon",
        "engine",
        "falcon",
        "guitar",
        "helmet",
        "island",
        "jacket",
        "kitten",
        "lemon",
        "magnet",
        "needle",
        "orange",
        "parrot",
        "quartz",
        "rocket",
        "saddle",
        "tomato",
        "umbrella",
        "velvet",
        "walnut",
        "yogurt",
        "zipper",
        "bridge",
        "cookie",
        "meadow",
        "harbor",
        "pillow",
        "summit",
        "blanket",
        "cactus",
        "feather",
        "hammer",
        "kettle",
        "lantern",
        "marble",
        "noodle",
        "paddle",
        "ribbon",
        "shovel",
        "spider",
        "teapot",
        "thunder",
        "turtle",
        "wagon",
        "whistle",
    ]
)


def _row(word: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": word},
            {"role": "assistant", "content": word.upper()},
        ]
    }


def _example(k: int, user: str, reply: str) -> Example:
    return Example(
        id=f"train-{k}",
        location=Location("train.jsonl", k + 1),
        format="messages",
        messages=(Message("system", SYSTEM), Message("user", user), Message("assistant", reply)),
    )


def _item(k: int, user: str, reference: str) -> EvalItem:
    return EvalItem(
        item_id=f"q{k}",
        messages=(Message("system", SYSTEM), Message("user", user)),
        reference=reference,
        location=f"eval.jsonl line {k + 1}",
    )


def _base() -> Subject:
    resolved = ResolvedBaseModel("smol", Path("/m"), "0" * 64, "test")
    return Subject(label="smol", base=resolved, requested="base")


# --------------------------------------------------------------------------------------------
# names


def test_the_name_grammar_takes_one_to_sixteen_examples() -> None:
    assert parse_fewshot("base+fewshot:4") == ("base", 4)
    assert parse_fewshot("smollm2-135m-instruct+fewshot:16") == ("smollm2-135m-instruct", 16)
    assert parse_fewshot("base") is None and parse_fewshot("extraction@v2") is None
    for bad in ("base+fewshot:0", "base+fewshot:17"):
        with pytest.raises(ValidationError, match="1-16"):
            parse_fewshot(bad)


# --------------------------------------------------------------------------------------------
# drawing and prompting


def test_examples_are_never_evaluation_items_and_the_draw_is_seeded() -> None:
    examples = [_example(k, f"{w} {w} stone", f"{w.upper()}") for k, w in enumerate(WORDS[:12])]
    items = [
        _item(0, examples[0].messages[1].content, examples[0].messages[2].content),  # verbatim
        _item(1, "  " + examples[1].messages[1].content.upper() + " ", "something else"),  # prompt
        _item(2, "a question no training row asks about", "nothing"),
    ]
    drawn = {
        shot[0].content
        for seed in range(20)
        for shot in fewshot.draw(examples, 10, items, seed=seed)
    }
    assert drawn == {e.messages[1].content for e in examples[2:]}
    assert fewshot.draw(examples, 4, items) == fewshot.draw(examples, 4, items)
    assert fewshot.draw(examples, 4, items, seed=1) != fewshot.draw(examples, 4, items, seed=2)
    with pytest.raises(ValidationError, match=r"needs 11 training examples .* 10 of 12 are"):
        fewshot.draw(examples, 11, items)


def test_a_preference_pair_shows_its_chosen_reply() -> None:
    pair = Example(
        id="p",
        location=Location("dpo.jsonl", 1),
        format="preference",
        messages=(Message("user", "name a colour"),),
        chosen="blue",
        rejected="seven",
    )
    (shot,) = fewshot.draw([pair], 1, [])
    assert [(m.role, m.content) for m in shot] == [("user", "name a colour"), ("assistant", "blue")]


def test_the_examples_go_after_the_system_message_and_the_zero_shot_base_is_untouched() -> None:
    shots = ((Message("user", "cat"), Message("assistant", "CAT")),)
    request = fewshot.Request(_base(), 1)
    subject = fewshot.subject(request, shots)
    with_system = _item(0, "dog", "DOG")
    without = EvalItem("q1", (Message("user", "owl"),), "OWL", "eval.jsonl line 2")
    asked = fewshot.prompted(subject, [with_system, without])
    assert [(m.role, m.content) for m in asked[0].messages] == [
        ("system", SYSTEM),
        ("user", "cat"),
        ("assistant", "CAT"),
        ("user", "dog"),
    ]
    assert [m.content for m in asked[1].messages] == ["cat", "CAT", "owl"]
    assert [i.item_id for i in asked] == ["q0", "q1"]
    assert fewshot.prompted(request.base, [with_system]) == [with_system]
    assert subject.label == "smol+fewshot:1" and subject.token == "smol+fewshot:1"
    # The examples are part of the identity (and so of the answer cache's key), but only then.
    assert "fewshot_sha256" in subject.identity()
    assert "fewshot_sha256" not in request.base.identity()


# --------------------------------------------------------------------------------------------
# a whole run on the embedded model


def _files(tmp_path: Path) -> tuple[Path, Path]:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(_row(w)) + "\n" for w in WORDS[:16]))
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(_row(w)) + "\n" for w in WORDS[16:52]))
    return train, data


# Zero discordant pairs in 36 bound the difference at about 3/36 = 0.08, well inside 0.2.
POLICY = (
    "name: no-worse-than-prompting\nmin_items: 20\nmetrics:\n  exact_match: {max_regression: 0.2}\n"
)
SUITE = {
    "name": "echo",
    "generation": {
        "enabled": True,
        "backend": "local",
        "metrics": ["exact_match"],
        "decoding": {"max_new_tokens": 5, "temperature": 0.0},
    },
    "contamination": {"enabled": False},
}


@pytest.mark.slow
def test_an_adapter_no_better_than_prompting_fails_against_few_shot_and_not_against_zero_shot(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    train, data = _files(tmp_path)
    sha = open_store(ev_settings).put_file(train)
    manifest = {
        "datasets": {
            "training_file": {"id": None, "name": "train.jsonl", "sha256": sha},
            "validation_file": {"id": "none", "sha256": "0" * 64},
        }
    }
    # All-zero LoRA weights: the candidate answers exactly as the zero-shot base does.
    folder = random_adapter(tmp_path / "zero", 0, scale=0.0)
    vid = register_adapter(ev_settings, ev_registry, folder, "echo", manifest)

    def run(baseline: str) -> service.Outcome:
        request = EvaluationCreate(
            candidate=vid, data=str(data), policy=POLICY, suite=SUITE, baseline=baseline
        )
        return service.run_now(ev_settings, ev_registry, request)

    zero = run("base")
    few = run("base+fewshot:4")
    cand = zero.result.candidate.metrics["exact_match"].value
    zero_base = zero.result.baseline.metrics["exact_match"].value  # type: ignore[union-attr]
    few_base = few.result.baseline.metrics["exact_match"].value  # type: ignore[union-attr]
    # Shown four solved cases, the base does the task; asked cold, it does not (nor the adapter).
    assert cand is not None and zero_base is not None and few_base is not None
    assert cand == zero_base and few_base >= cand + 0.4, (cand, zero_base, few_base)
    assert zero.gate is not None and few.gate is not None
    assert zero.gate.decision == "pass", zero.gate.reasons
    assert few.gate.decision == "fail", few.gate.reasons
    assert few.result.baseline is not None and few.result.baseline.model.endswith("+fewshot:4")
    shots = few.result.baseline.fewshot
    assert shots is not None and shots["k"] == 4
    shown = {shot[0]["content"] for shot in shots["examples"]}
    assert shown <= set(WORDS[:16])  # from the training rows, none from the evaluation set
    assert "Few-shot baseline" in few.paths["html"].read_text()
    assert "Few-shot baseline" not in zero.paths["html"].read_text()
    junit = ET.fromstring(few.paths["junit"].read_text())
    assert junit.find(".//testcase[@name='few-shot base']") is not None

    # An alias that must beat the better of the two (first_baseline "base,base+fewshot:4") does
    # not move on the zero-shot pass alone: the pass against the few-shot base is missing.
    body = yaml.safe_load(POLICY)
    with ev_registry.session() as s:
        policies.register_policy(s, "prompting", body, parse_policy(POLICY).sha256(), actor="admin")
        policies.protect_alias(
            s, "echo", "prod", "prompting", first_baseline="base,base+fewshot:4", actor="admin"
        )
    with (
        pytest.raises(ForbiddenError, match="has passed against base\\+fewshot:4 under that"),
        ev_registry.session() as s,
    ):
        adapters.set_alias(s, "echo", "prod", vid, evaluation_run_id=zero.run_id)
    # A promotion request compares with what is still missing, and with nothing else.
    promote = EvaluationCreate(candidate=vid, data=str(data), suite=SUITE, promote="prod")
    prepared = prepare(ev_settings, ev_registry, promote, local=True, complete=False)
    assert str(prepared.evidence()["baseline_version"]).endswith("+fewshot:4")
    elsewhere = promote.model_copy(update={"baseline": "base+fewshot:2"})
    with pytest.raises(ForbiddenError, match=r"only on a comparison with .*fewshot:4"):
        prepare(ev_settings, ev_registry, elsewhere, local=True, complete=False)
    with ev_registry.session() as s:
        assert adapters.get_alias(s, "echo", "prod") is None
