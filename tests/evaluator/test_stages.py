"""Stages of a run: which components run and in what order, each stage's size, and the progress
the tracker reports through them."""

from __future__ import annotations

from services.evaluator.stages import Tracker, components_run, stage_label, stages
from services.evaluator.suite import Suite
from tests.evaluator import planning


def test_components_run_in_registry_order_with_generation_when_answers_are_read() -> None:
    assert components_run(Suite()) == ["contamination"]
    judged = Suite(judge={"enabled": True}, perplexity={"enabled": True})
    assert components_run(judged) == ["generation", "perplexity", "judge", "contamination"]
    assert components_run(
        Suite(perplexity={"enabled": True}, contamination={"enabled": False})
    ) == ["perplexity"]


def test_stage_labels_name_the_role() -> None:
    assert stage_label("generation", "baseline") == "generate (baseline)"
    assert stage_label("lmeval") == "lm-eval"


def test_stages_list_per_subject_ones_for_each_subject_then_the_rest() -> None:
    suite = Suite(
        generation={"enabled": True},
        perplexity={"enabled": True},
        judge={"enabled": True, "modes": ["pairwise"], "anchors": 2},
        lmeval={"enabled": True, "tasks": ["a", "b", "c"]},
        contamination={"enabled": False},
    )
    assert stages(planning.plan(suite, n=5)) == [
        ("generate (candidate)", 5),
        ("perplexity (candidate)", 5),
        ("lm-eval (candidate)", 3),
        ("generate (baseline)", 5),
        ("perplexity (baseline)", 5),
        ("lm-eval (baseline)", 3),
        ("judge", 2 * 5 + 2 * 2),
    ]
    alone = stages(planning.plan(suite, n=5, baseline=None))
    assert [label for label, _ in alone][:3] == [
        "generate (candidate)",
        "perplexity (candidate)",
        "lm-eval (candidate)",
    ]
    assert stages(planning.plan(Suite(limit=2, perplexity={"enabled": True}), n=5))[0][1] == 2


def test_tracker_reports_the_overall_fraction_and_the_current_stage() -> None:
    seen: list[tuple[float, str]] = []

    def report(fraction: float, stage: str) -> None:
        seen.append((fraction, stage))

    tracker = Tracker([("a", 2), ("b", 0), ("c", 5)], report)
    assert tracker.total == 2 + 1 + 5  # an empty stage still counts one unit
    with tracker.stage("a", 2) as advance:
        advance(1)
        assert seen[-1] == (1 / 8, "a")
        advance(1)
    assert tracker.fraction == 2 / 8
    with tracker.stage("b", 0):
        pass  # nothing reported: the whole stage is counted when it ends
    assert tracker.fraction == 3 / 8 and seen[-1] == (3 / 8, "b")
    with tracker.stage("c", 5) as advance:
        advance(2)  # three answers came from the cache
    assert seen[-1] == (1.0, "c")
    silent = Tracker([])  # no callback: nothing to report to, and no stage is an empty run
    with silent.stage("x", 1) as advance:
        advance(3)  # more than announced: the fraction stops at 1
    assert silent.fraction == 1.0
