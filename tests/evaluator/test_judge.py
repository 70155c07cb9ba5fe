"""LLM-as-judge: verdict parsing, both-order pairing, reliability, and the gate refusing a biased
judge. The judge is a stub OpenAI-compatible server (a real-model judge test is in test_slow.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from services.evaluator import gate, judge
from services.evaluator.data import EvalData, EvalItem
from services.evaluator.policy import parse_policy
from services.evaluator.results import ItemResult, RunResult, SubjectResult
from services.evaluator.runner import Runner, RunPlan
from services.evaluator.subjects import Subject
from services.evaluator.suite import Suite
from shared.basemodel import ResolvedBaseModel
from shared.datasets.records import Message
from shared.errors import SystemFailure
from tests.evaluator.stub_openai import stub_server

NAMES = [
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Ken Thompson",
    "Margaret Hamilton",
    "John Backus",
    "Frances Allen",
    "Tony Hoare",
    "Niklaus Wirth",
    "Leslie Lamport",
    "Radia Perlman",
    "Dennis Ritchie",
    "Adele Goldberg",
    "Jean Sammet",
    "Fran Bilas",
    "Kathleen Booth",
    "Ivan Sutherland",
]
CITIES = ["Oslo", "Lyon", "Quito", "Perth", "Kyoto", "Lagos", "Leeds", "Milan", "Porto", "Cairo"]


def _items() -> list[EvalItem]:
    out = []
    for k, name in enumerate(NAMES):
        city = CITIES[k % len(CITIES)]
        ref = json.dumps({"name": name, "city": city})
        out.append(
            EvalItem(
                f"i{k}",
                (Message("user", f"Order from {name} in {city}."),),
                ref,
                f"t.jsonl line {k + 1}",
            )
        )
    return out


def test_parse_rating_and_verdict_robustly() -> None:
    assert judge.parse_rating("Good. Rating: [[8]]") == 8.0
    assert judge.parse_rating("**Rating:** 6") == 6.0
    assert judge.parse_rating('{"score": 9}') == 9.0
    assert judge.parse_rating("I give it 7/10.") == 7.0
    assert judge.parse_rating("Rating: [[11]]") is None
    assert judge.parse_rating("no idea") is None
    assert judge.parse_verdict("B wins. [[B]]") == "B"
    assert judge.parse_verdict("[[C]]") == "tie"
    assert judge.parse_verdict("Verdict: A") == "A"
    assert judge.parse_verdict("Answer B is better than A.") == "B"
    assert judge.parse_verdict("It's a tie.") == "tie"
    assert judge.parse_verdict("[[A]] ... no wait [[B]]") is None  # contradictory: not a guess
    assert judge.parse_verdict("hmm") is None


def test_pair_outcome_rules() -> None:
    assert judge.PairOutcome("A", "B").candidate_score == 1.0  # both orders pick the candidate
    assert judge.PairOutcome("B", "A").candidate_score == 0.0
    biased = judge.PairOutcome("A", "A")  # always the first position
    assert biased.candidate_score == 0.5 and biased.flipped
    assert not judge.PairOutcome("tie", "tie").flipped


PROMPT_PARTS = (
    "RUBRIC_VERSION",
    "RUBRIC_SYSTEM",
    "RUBRIC_USER",
    "PAIRWISE_VERSION",
    "PAIRWISE_SYSTEM",
    "PAIRWISE_USER",
    "REFERENCE_BLOCK",
)


def test_prompt_is_versioned_and_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Worked out here from the prompt texts themselves, not by calling the function twice.
    parts = [getattr(judge, name) for name in PROMPT_PARTS]
    expected = hashlib.sha256("\n\0".join(parts).encode()).hexdigest()
    assert judge.prompt_sha256() == expected
    # Every part of every prompt, and each version, moves the hash: a changed prompt is a changed
    # metric, and no part can be edited without the recorded hash showing it.
    seen = {expected}
    for name in PROMPT_PARTS:
        with monkeypatch.context() as m:
            m.setattr(judge, name, getattr(judge, name) + " Be brief.")
            changed = judge.prompt_sha256()
        assert changed not in seen, name
        seen.add(changed)
    assert judge.prompt_sha256() == expected


def _run_judge(url: str, candidate: list[str], baseline: list[str]) -> RunResult:
    items = _items()
    base = ResolvedBaseModel("m", Path("/nonexistent"), "0" * 64, "test")
    subj = Subject(label="m", base=base)
    suite = Suite(judge={"enabled": True, "modes": ["pairwise", "rubric"], "anchors": 6})
    plan = RunPlan(
        run_id="t",
        candidate=subj,
        baseline=subj,
        data=EvalData("t.jsonl", "0" * 64, items),
        suite=suite,
        judge_url=url,
        judge_model="judge",
    )
    result = RunResult(
        run_id="t",
        candidate=SubjectResult(
            role="candidate",
            model="a@v2",
            items=[ItemResult(item_id=i.item_id, item_hash=i.item_hash) for i in items],
        ),
        baseline=SubjectResult(
            role="baseline",
            model="base",
            items=[ItemResult(item_id=i.item_id, item_hash=i.item_hash) for i in items],
        ),
    )
    Runner(plan)._judge(result, items, {"candidate": candidate, "baseline": baseline})
    return result


def test_biased_judge_flips_every_pair_and_the_gate_refuses_it() -> None:
    items = _items()
    good = [i.reference for i in items]
    bad = ["I cannot help with that."] * len(items)
    with stub_server("first") as url:
        result = _run_judge(url, good, bad)
    assert result.judge is not None
    assert result.judge.flip_rate == 1.0  # reported as 100%
    assert result.judge.first_position_rate == 1.0
    assert result.judge.anchor_accuracy == 0.5
    assert result.candidate.metrics["judge.win_rate"].value == 0.5  # every pair a tie
    policy = parse_policy("min_items: 5\nmetrics:\n  judge.win_rate: {min: 0.4}\n")
    decision = gate.decide(policy, result)
    assert decision.decision == "inconclusive"
    assert "flip rate 100% > limit 20%" in decision.lines[0].reasons[0]


def test_fair_judge_is_trusted_and_decides() -> None:
    items = _items()
    good = [i.reference for i in items]
    bad = ["I cannot help with that."] * len(items)
    with stub_server("fair") as url:
        result = _run_judge(url, good, bad)
    assert result.judge is not None
    assert result.judge.flip_rate == 0.0 and result.judge.anchor_accuracy == 1.0
    assert result.candidate.metrics["judge.win_rate"].value == 1.0
    assert result.candidate.metrics["judge.score"].value == 7.0
    assert result.judge.prompt_sha256 == judge.prompt_sha256()
    policy = parse_policy(
        "min_items: 5\nmetrics:\n  judge.win_rate: {min: 0.6}\n"
        "  judge.score: {min: 5, max_regression: 1}\n"
    )
    assert gate.decide(policy, result).decision == "pass"


def test_unparseable_replies_are_counted_and_too_many_make_the_judge_untrusted() -> None:
    items = _items()
    good = [i.reference for i in items]
    bad = ["I cannot help with that."] * len(items)
    with stub_server("mumble") as url:
        result = _run_judge(url, good, bad)
    rel = result.judge
    assert rel is not None
    # 20 items: Oslo is items 0 and 10, Lyon 1 and 11. Rubric: 4 items x 2 subjects off-format;
    # pairwise: 2 Oslo items x 2 orders; anchors (the first 6 items, both orders): item 0 twice.
    assert rel.parse_failures_by_mode == {"pairwise": 4, "rubric": 8, "anchors": 2}
    assert rel.replies == 2 * 20 + 2 * 20 + 2 * 6
    assert rel.parse_failures == 14
    assert rel.parse_failure_rate == pytest.approx(14 / 92)
    # The rubric metric says how many items its n lost; unparsed pairs became ties.
    score = result.candidate.metrics["judge.score"]
    assert score.n == 16 and score.settings["parse_failures"] == 4
    assert result.candidate.metrics["judge.win_rate"].value == pytest.approx(19 / 20)
    assert rel.flip_rate == 0.0 and rel.anchor_accuracy == pytest.approx(10 / 12)
    lines = "min_items: 5\nmetrics:\n  judge.win_rate: {min: 0.6}\n  judge.score: {min: 5}\n"
    # Default limit 10%: 15% of the replies unparsed, so every judged line is inconclusive.
    decision = gate.decide(parse_policy(lines), result)
    assert decision.decision == "inconclusive"
    for line in decision.lines:
        assert "unparseable replies 15% (14 of 92) > limit 10%" in line.reasons[0], line.reasons
    # Control: the same run under a looser limit is trusted and decides on the values.
    loose = parse_policy("judge: {max_parse_failure_rate: 0.2}\n" + lines)
    assert gate.decide(loose, result).decision == "pass"
    # The report carries the count, the rate and the modes.
    from services.evaluator.report import html_report

    assert "14 of 92 (0.1522): pairwise 4, rubric 8, anchors 2" in html_report(result, None)


def test_unreachable_judge_is_a_clear_error() -> None:
    from services.evaluator.runner import preflight

    items = _items()
    base = ResolvedBaseModel("m", Path("/nonexistent"), "0" * 64, "test")
    subj = Subject(label="m", base=base)
    plan = RunPlan(
        run_id="t",
        candidate=subj,
        baseline=subj,
        data=EvalData("t.jsonl", "0" * 64, items),
        suite=Suite(judge={"enabled": True}),
        judge_url="http://127.0.0.1:9",
        judge_model="judge",
    )
    with pytest.raises(SystemFailure, match=r"judge endpoint http://127.0.0.1:9 is unreachable"):
        preflight(plan)
