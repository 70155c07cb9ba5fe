"""The contamination check: memorised evaluation items are found and fail a ``max: 0`` gate, a
clean set passes, and a paraphrase sharing a phrase or two is not flagged. No model is loaded: a
policy that names only ``contamination.rate`` runs no model component."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from services.evaluator import cli_output, contamination, gate, lineage, service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.contamination import Index, TrainingData, check, training_row
from services.evaluator.data import EvalItem, load_data
from services.evaluator.metrics.task import words
from services.evaluator.policy import parse_policy
from services.evaluator.results import ItemResult, RunResult, SubjectResult
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.stages import components_run
from shared.artifacts import open_store
from shared.datasets.loading import load_examples
from shared.datasets.records import Example, Location, Message
from shared.errors import ValidationError
from shared.registry.db import Registry

from .conftest import random_adapter, register_adapter

SYSTEM = "Answer the customer's question in one short paragraph."
POLICY = "name: clean-data\nmetrics:\n  contamination.rate: {max: 0}\n"


def _sentence(rng: random.Random, n: int) -> str:
    # Pseudo-words from a large space: independent texts share no 8-gram by chance.
    syllables = ["ka", "lo", "mi", "ter", "su", "van", "del", "or", "pi", "nus", "ra", "te"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def _row(rng: random.Random) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": _sentence(rng, 18)},
            {"role": "assistant", "content": _sentence(rng, 20)},
        ]
    }


def _training(n: int = 40, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [_row(rng) for _ in range(n)]


def _messages(row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    msgs = row["messages"]
    return msgs[:-1], msgs[-1]["content"]


def _one_word_changed(text: str) -> str:
    words = text.split()
    mid = len(words) // 2
    words[mid] = "zzyzx"
    return " ".join(words)


def _eval_rows(train: list[dict[str, Any]], memorised: bool, seed: int = 2) -> list[dict[str, Any]]:
    """24 items; with ``memorised`` the first four come from training rows, the fifth is a
    paraphrase that keeps one ten-word phrase of a training row (below the threshold)."""
    rng = random.Random(seed)
    rows = [_row(rng) for _ in range(24)]
    if memorised:
        rows[0] = json.loads(json.dumps(train[3]))  # verbatim
        prompt, reply = _messages(train[5])
        rows[1]["messages"] = [
            prompt[0],
            {"role": "user", "content": "  " + prompt[1]["content"].upper().replace(" ", "\n ")},
            {"role": "assistant", "content": reply.replace(" ", "  ").rstrip(".") + " !"},
        ]
        prompt, reply = _messages(train[7])
        question = {"role": "user", "content": _one_word_changed(prompt[1]["content"])}
        rows[2]["messages"] = [prompt[0], question, {"role": "assistant", "content": reply}]
        prompt, _reply = _messages(train[9])  # the trained input, another answer
        rows[3]["messages"] = [*prompt, {"role": "assistant", "content": _sentence(rng, 20)}]
    phrase = " ".join(train[11]["messages"][1]["content"].split()[2:12])
    rows[4]["messages"][1]["content"] = f"{_sentence(rng, 12)} {phrase} {_sentence(rng, 10)}"
    return [{"id": f"q{k}", **r} for k, r in enumerate(rows)]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _items(tmp_path: Path, rows: list[dict[str, Any]]) -> list[EvalItem]:
    return load_data(_write(tmp_path / "eval.jsonl", rows)).items


def _index(tmp_path: Path, train: list[dict[str, Any]], n: int = 8) -> Index:
    path = _write(tmp_path / "train.jsonl", train)
    return Index(contamination.load_rows(path, "train.jsonl"), n)


# --------------------------------------------------------------------------------------------
# the check itself


def test_normalisation_is_nfkc_casefold_without_punctuation_or_extra_space() -> None:
    assert contamination.normalise("  Ｆｕｌｌ-width\tTEXT,\n  ok!! ") == [
        "full",
        "width",
        "text",
        "ok",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Plain ASCII, with punctuation!",
        "Ｆｕｌｌ-width and ß Straße ﬁne",
        "日本語のテキスト mixed with English",
        "한국어 문장 and 中文",
        "tabs\tand\nnew lines_with_underscores 3.14",
    ],
)
def test_the_fast_normalisation_gives_the_metrics_tokens(text: str) -> None:
    assert contamination.normalise(text) == words(text)
    row = training_row(
        Example("r", Location("t", 1), "chat", (Message("user", text), Message("assistant", text)))
    )
    # The index normalises a row's prompt once and reuses it as the start of its text.
    prompt = contamination.normalise(row.prompt)
    assert contamination._tokens(row, prompt) == contamination.normalise(row.text)


def test_memorised_items_are_found_with_their_training_row_and_kind(tmp_path: Path) -> None:
    train = _training()
    items = _items(tmp_path, _eval_rows(train, memorised=True))
    values, found, short = check(items, _index(tmp_path, train))
    by_item = {o.item_id: o for o in found}
    assert set(by_item) == {"q0", "q1", "q2", "q3"}
    assert [by_item[f"q{k}"].kind for k in range(4)] == ["exact", "exact", "ngram", "exact_prompt"]
    assert [by_item[f"q{k}"].training_location for k in range(4)] == [
        "train.jsonl line 4",
        "train.jsonl line 6",
        "train.jsonl line 8",
        "train.jsonl line 10",
    ]
    near = by_item["q2"]
    assert 0.8 <= near.overlap < 1.0 and near.item_index == 2  # only the changed word is uncovered
    assert sum(values.values()) == 4 and values["q4"] == 0.0 and short == 0


def test_a_paraphrase_sharing_one_phrase_is_below_the_threshold(tmp_path: Path) -> None:
    train = _training()
    items = _items(tmp_path, _eval_rows(train, memorised=False))
    index = _index(tmp_path, train)
    _values, found, _short = check(items, index)
    assert found == []
    prompt, full = contamination.item_texts(items[4])
    hit = index.match(contamination.normalise(full), contamination.normalise(prompt))
    # Control: the phrase *is* shared (3 of its 8-grams), it is just far from 80% of the item.
    assert hit is not None and hit[0] == "ngram" and hit[3] == 3 and 0.1 < hit[2] < 0.4
    _values, found, _short = check(items, index, threshold=hit[2])
    assert [o.item_id for o in found] == ["q4"]


def test_the_threshold_and_n_decide_what_a_near_duplicate_is(tmp_path: Path) -> None:
    train = _training()
    items = _items(tmp_path, _eval_rows(train, memorised=True))
    _v, found, _s = check(items, _index(tmp_path, train), threshold=1.0)
    assert "q2" not in {o.item_id for o in found}  # one changed word: coverage below 100%
    _v, found, short = check(items, _index(tmp_path, train, n=60))
    # Longer than any item: only exact matches remain, and every item is counted as short.
    assert {o.item_id for o in found} == {"q0", "q1", "q3"} and short == len(items)


def test_a_template_every_row_shares_neither_hides_a_copy_nor_flags_a_clean_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lower the "template" bar so that 40 rows exercise it: the opening's n-grams are in every row.
    monkeypatch.setattr(contamination, "COMMON_ROWS", 3)
    opening = "please read the following customer message and then answer it"
    train = _training()
    for row in train:
        row["messages"][1]["content"] = f"{opening} {row['messages'][1]['content']}"
    rows = _eval_rows(train, memorised=True)
    for row in rows[4:]:
        row["messages"][1]["content"] = f"{opening} {row['messages'][1]['content']}"
    _v, found, _s = check(_items(tmp_path, rows), _index(tmp_path, train))
    by_item = {o.item_id: o for o in found}
    assert set(by_item) == {"q0", "q1", "q2", "q3"}
    assert by_item["q2"].kind == "ngram" and by_item["q2"].training_location == "train.jsonl line 8"


def test_short_items_match_only_exactly(tmp_path: Path) -> None:
    train = [
        {
            "messages": [
                {"role": "user", "content": "say yes please now"},
                {"role": "assistant", "content": "yes"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": _sentence(random.Random(3), 20)},
                {"role": "assistant", "content": "yes indeed say yes please now ok"},
            ]
        },
    ]
    rows = [
        {
            "id": "same",
            "messages": [
                {"role": "user", "content": "Say yes, please now."},
                {"role": "assistant", "content": "YES"},
            ],
        },
        {
            "id": "inside",
            "messages": [
                {"role": "user", "content": "say yes please"},
                {"role": "assistant", "content": "now"},
            ],
        },
    ]
    _v, found, short = check(_items(tmp_path, rows), _index(tmp_path, train))
    assert [(o.item_id, o.kind) for o in found] == [("same", "exact")] and short == 2


def test_preference_rows_count_their_prompt_and_both_replies() -> None:
    loc = Location("dpo.jsonl", 1)
    example = Example("p1", loc, "preference", (Message("user", "Which is it?"),), "A", "B")
    row = training_row(example)
    assert row.prompt == "Which is it?" and row.text == "Which is it?\nA\nB"
    sft = Example(
        "s1",
        loc,
        "chat",
        (Message("system", "sys"), Message("user", "q"), Message("assistant", "a")),
    )
    assert (training_row(sft).prompt, training_row(sft).text) == ("q", "q\na")


# --------------------------------------------------------------------------------------------
# the metric and the gate


def _gated(tmp_path: Path, memorised: bool) -> tuple[RunResult, gate.GateResult]:
    train = _training()
    items = _items(tmp_path, _eval_rows(train, memorised))
    path = _write(tmp_path / "train.jsonl", train)
    rows = contamination.load_rows(path, "train.jsonl")
    result = RunResult(run_id="t", candidate=new_subject_like(items))
    result.contamination = contamination.run(
        result.candidate, items, TrainingData({"file": "train.jsonl"}, rows)
    )
    return result, gate.decide(parse_policy(POLICY), result)


def new_subject_like(items: list[EvalItem]) -> SubjectResult:
    return SubjectResult(
        role="candidate",
        model="a@v1",
        items=[ItemResult(item_id=i.item_id, item_hash=i.item_hash) for i in items],
    )


def test_memorised_items_fail_a_max_zero_policy_and_a_clean_set_passes(tmp_path: Path) -> None:
    result, decision = _gated(tmp_path, memorised=True)
    metric = result.candidate.metrics["contamination.rate"]
    assert metric.value == pytest.approx(4 / 24) and metric.n == 24 and not metric.paired
    assert not metric.higher_is_better and metric.settings["ngram"] == 8
    assert decision.decision == "fail"
    assert decision.lines[0].reasons[0].startswith("[fail] contamination.rate: 0.1667 > max 0")
    extra = result.candidate.item_map()["q2"].extra["contamination"]
    assert extra["kind"] == "ngram" and extra["training_row"]
    result, decision = _gated(tmp_path, memorised=False)
    assert result.candidate.metrics["contamination.rate"].value == 0.0
    assert decision.decision == "pass"


def test_without_training_data_a_bounding_policy_fails_closed() -> None:
    result = RunResult(run_id="t", candidate=new_subject_like([]))
    result.contamination = contamination.run(result.candidate, [], "a@v1's lineage names no data")
    decision = gate.decide(parse_policy(POLICY), result)
    assert decision.decision == "fail"
    assert "lineage names no data" in decision.lines[0].reasons[0]


def test_a_policy_cannot_compare_the_rate_with_a_baseline() -> None:
    with pytest.raises(ValidationError):
        parse_policy("metrics:\n  contamination.rate: {max_regression: 0.01}\n")


# --------------------------------------------------------------------------------------------
# a whole run: lineage -> training rows -> gate -> reports


def _candidate(
    settings: EvaluatorSettings, registry: Registry, tmp_path: Path, train: Path, **datasets: Any
) -> str:
    sha = open_store(settings).put_file(train)
    manifest = {
        "datasets": {
            "training_file": {"id": None, "name": train.name, "sha256": sha},
            **datasets,
        },
        "config": {"spec": {"data": {"validation_fraction": 0.1}}, "hyperparameters": {"seed": 7}},
    }
    folder = random_adapter(tmp_path / "adapter", 5)
    return register_adapter(settings, registry, folder, "contam", manifest)


@pytest.mark.parametrize("memorised", [True, False])
def test_a_run_on_lineage_gates_and_reports_contamination(
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    tmp_path: Path,
    memorised: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    train_rows = _training()
    train = _write(tmp_path / "train.jsonl", train_rows)
    vid = _candidate(
        ev_settings, ev_registry, tmp_path, train, validation_file={"id": "x", "sha256": "0" * 64}
    )
    data = _write(tmp_path / "eval.jsonl", _eval_rows(train_rows, memorised))
    request = EvaluationCreate(candidate=vid, data=str(data), policy=POLICY, baseline="none")
    outcome = service.run_now(ev_settings, ev_registry, request)
    assert outcome.gate is not None
    assert outcome.gate.decision == ("fail" if memorised else "pass")
    assert outcome.exit_code == (1 if memorised else 0)
    assert set(outcome.result.candidate.metrics) == {"contamination.rate"}  # no model ran
    html = outcome.paths["html"].read_text()
    n = 4 if memorised else 0
    assert f"Contamination ({n} items)" in html and ("train.jsonl line 8" in html) == memorised
    stored = json.loads(outcome.paths["json"].read_text())
    assert [o["item_id"] for o in stored["contamination"]["overlaps"]] == [
        f"q{k}" for k in range(n)
    ]
    junit = ET.fromstring(outcome.paths["junit"].read_text())
    # One failure per problem: the gate's line fails and lists the items; the check's own case
    # lists them too and does not fail a second time.
    suite = junit.find(".//testsuite")
    assert suite is not None and suite.get("failures") == ("1" if memorised else "0")
    line = junit.find(".//testcase[@name='contamination.rate']")
    case = junit.find(".//testcase[@classname='contamination']")
    assert line is not None and case is not None and case.find("failure") is None
    assert (line.find("failure") is not None) == memorised
    for element in (line, case):
        assert ("q2 (#2): ngram" in ET.tostring(element, encoding="unicode")) == memorised
    cli_output.print_outcome(outcome, False, None)
    printed = capsys.readouterr().out
    assert ("contamination: 4 items found" in printed) == memorised
    assert ("q1 (exact, train.jsonl line 6)" in printed) == memorised


def test_the_held_out_split_is_not_counted_as_training_data(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    train_rows = _training(60)
    train = _write(tmp_path / "train.jsonl", train_rows)
    vid = _candidate(ev_settings, ev_registry, tmp_path, train, validation_file=None)
    lineage._split.cache_clear()
    plan = service.prepare(ev_settings, ev_registry, EvaluationCreate(candidate=vid)).plan
    # The split is built once: for the data, then reused for the rows it leaves for training.
    assert (lineage._split.cache_info().misses, lineage._split.cache_info().hits) == (1, 1)
    assert isinstance(plan.training, TrainingData)
    assert len(plan.training.rows) + len(plan.data.items) == len(load_examples(train).examples)
    assert "contamination" in components_run(plan.suite)
    result = RunResult(run_id="t", candidate=new_subject_like(plan.items))
    report = contamination.run(result.candidate, plan.items, plan.training)
    assert report.rate == 0.0 and report.training["held_out_rows"] == len(plan.items)


def test_no_lineage_leaves_the_check_out_unless_the_policy_bounds_it(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    data = _write(tmp_path / "eval.jsonl", _eval_rows(_training(), memorised=False))
    request = EvaluationCreate(candidate="base", data=str(data), baseline="none", suite="quick")
    plan = service.prepare(ev_settings, ev_registry, request, local=True).plan
    assert "contamination" not in components_run(plan.suite)
    request = EvaluationCreate(candidate="base", data=str(data), baseline="none", policy=POLICY)
    outcome = service.run_now(ev_settings, ev_registry, request)
    assert outcome.gate is not None and outcome.gate.decision == "fail"
    assert "names no training data" in outcome.gate.lines[0].reasons[0]


def test_a_continued_adapter_is_checked_against_its_parents_rows_too(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    parent_rows, child_rows = _training(30, seed=5), _training(30, seed=6)
    parent_file = _write(tmp_path / "parent.jsonl", parent_rows)
    child_file = _write(tmp_path / "child.jsonl", child_rows)
    store = open_store(ev_settings)
    kept = {"id": "x", "sha256": "0" * 64}  # a separate validation file: every row was trained on

    def manifest(path: Path, parent: str | None) -> dict[str, Any]:
        data = {"id": None, "name": path.name, "sha256": store.put_file(path)}
        return {
            "datasets": {"training_file": data, "validation_file": kept},
            "base_adapter": {"id": parent, "sha256": "0" * 64} if parent else None,
        }

    def version(seed: int, body: dict[str, Any]) -> str:
        folder = random_adapter(tmp_path / f"a{seed}", seed)
        return register_adapter(ev_settings, ev_registry, folder, "chain", body)

    parent = version(1, manifest(parent_file, None))
    child = version(2, manifest(child_file, parent))
    rows = _eval_rows(_training(), memorised=False)
    rows[0] = {"id": "q0", **parent_rows[4]}
    rows[1] = {"id": "q1", **child_rows[6]}
    data = _write(tmp_path / "eval.jsonl", rows)
    request = EvaluationCreate(candidate=child, data=str(data), baseline="none")
    plan = service.prepare(ev_settings, ev_registry, request, local=True).plan
    assert isinstance(plan.training, TrainingData) and len(plan.training.rows) == 60
    assert plan.training.source["continued_from"][0]["version"] == parent
    result = RunResult(run_id="t", candidate=new_subject_like(plan.items))
    report = contamination.run(result.candidate, plan.items, plan.training)
    assert [(o.item_id, o.training_location) for o in report.overlaps] == [
        ("q0", "parent.jsonl line 5"),
        ("q1", "child.jsonl line 7"),
    ]
    # A parent whose data is gone: the check cannot vouch for the items, so it says why.
    gone = {"training_file": {"id": "gone", "sha256": "1" * 64}, "validation_file": kept}
    orphan = version(3, {"datasets": gone})
    request.candidate = version(4, manifest(child_file, orphan))
    plan = service.prepare(ev_settings, ev_registry, request, local=True).plan
    assert isinstance(plan.training, str) and f"continues from {orphan}" in plan.training


def test_the_suite_sets_n_and_the_threshold(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    train_rows = _training()
    train = _write(tmp_path / "train.jsonl", train_rows)
    vid = _candidate(
        ev_settings, ev_registry, tmp_path, train, validation_file={"id": "x", "sha256": "0" * 64}
    )
    data = _write(tmp_path / "eval.jsonl", _eval_rows(train_rows, memorised=True))
    suite = {"contamination": {"threshold": 1.0, "ngram": 6}}
    request = EvaluationCreate(candidate=vid, data=str(data), suite=suite, baseline="none")
    outcome = service.run_now(ev_settings, ev_registry, request)
    assert outcome.result.contamination is not None
    assert [o.item_id for o in outcome.result.contamination.overlaps] == ["q0", "q1", "q3"]
    settings = outcome.result.candidate.metrics["contamination.rate"].settings
    assert (settings["ngram"], settings["threshold"]) == (6, 1.0)
