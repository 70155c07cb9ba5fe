"""The runner with its model and server replaced by fakes: answers come from the backend the plan
picks, greedy answers are cached per subject identity, every stage reports progress, and the
result holds both subjects' metrics and the run's description."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.evaluator import runner
from services.evaluator.data import EvalItem
from services.evaluator.runner import Runner
from services.evaluator.subjects import Subject
from tests.evaluator import planning

GENERATE: dict[str, Any] = {
    "generation": {"enabled": True, "metrics": ["exact_match"]},
    "contamination": {"enabled": False},
}


class FakeModels:
    def describe(self, subject: Subject | None = None) -> dict[str, Any]:
        return {"backend": "fake in-process"}


class Backends:
    """Fake generate_local / generate_server: the candidate answers right, the base wrongly."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, list[str]]] = []
        monkeypatch.setattr(runner, "generate_local", self.local)
        monkeypatch.setattr(runner, "generate_server", self.server)

    def answer(self, subject: Subject, items: Sequence[EvalItem]) -> list[str]:
        return [i.reference if subject.version_id else "no idea" for i in items]

    def local(
        self,
        models: Any,
        subject: Subject,
        items: Sequence[EvalItem],
        decoding: Any,
        *,
        batch_size: int,
        progress: Callable[[int], None],
    ) -> list[str]:
        self.calls.append(("local", subject.label, [i.item_id for i in items]))
        progress(len(items))
        return self.answer(subject, items)

    def server(
        self,
        url: str,
        subject: Subject,
        items: Sequence[EvalItem],
        decoding: Any,
        *,
        concurrency: int,
        api_key: str | None,
        progress: Callable[[int], None],
    ) -> list[str]:
        self.calls.append((url, subject.served_name, [i.item_id for i in items]))
        progress(len(items))
        return self.answer(subject, items)


def runner_for(plan: Any, updates: list[float] | None = None) -> Runner:
    tracker = runner.Tracker(
        runner.stages(plan), lambda f, _s: updates.append(f) if updates is not None else None
    )
    out = Runner(plan, tracker)
    out._models = FakeModels()  # type: ignore[assignment]
    return out


def test_a_plan_prepared_only_to_validate_cannot_run() -> None:
    with pytest.raises(ValueError, match="prepared to validate a request"):
        Runner(planning.plan(GENERATE, complete=False))


def test_a_run_scores_both_subjects_and_describes_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backends = Backends(monkeypatch)
    manifest = {"loss_curve": [[1, 2.0], [2, 1.5]]}
    plan = replace(
        planning.plan(GENERATE, n=3), candidate=replace(planning.CANDIDATE, manifest=manifest)
    )
    updates: list[float] = []
    result = runner_for(plan, updates).run()
    assert [c[:2] for c in backends.calls] == [("local", "a@v2"), ("local", "m")]
    assert result.candidate.metrics["exact_match"].value == 1.0
    assert result.baseline is not None and result.baseline.metrics["exact_match"].value == 0.0
    assert result.candidate.item_map()["q1"].output == "answer 1"
    assert result.data["n_used"] == 3 and result.data["n_items"] == 3
    assert result.loss_curve == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert result.suite["generation"]["enabled"] and "transformers" in result.versions
    assert {"generate_candidate_s", "generate_baseline_s", "total_s"} <= set(result.timings)
    assert updates[-1] == 1.0 and updates == sorted(updates)
    settings = result.candidate.metrics["exact_match"].settings
    # In process, the loaded model's description is recorded (its backend replaces "local").
    assert settings["backend"] == "fake in-process" and settings["cached_answers"] == 0
    assert settings["batch_size"] == 8 and settings["decoding"]["max_new_tokens"] == 128


def test_answers_come_from_the_server_when_the_plan_has_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backends = Backends(monkeypatch)
    plan = planning.plan(GENERATE, n=2, baseline=None, server_url="http://srv")
    result = runner_for(plan).run()
    assert backends.calls == [("http://srv", "a@v2", ["q0", "q1"])]
    settings = result.candidate.metrics["exact_match"].settings
    assert settings["server_url"] == "http://srv" and settings["model"] == "a@v2"
    assert result.baseline is None


def test_greedy_answers_are_cached_per_subject_identity(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    backends = Backends(monkeypatch)
    plan = planning.plan(GENERATE, n=3, cache_dir=tmp_path)
    runner_for(plan).run()
    assert len(backends.calls) == 2
    backends.calls.clear()
    more = planning.plan(GENERATE, n=4, cache_dir=tmp_path)
    result = runner_for(more).run()
    # Only the new item is asked, for each subject; the base keeps its own (wrong) answers.
    assert backends.calls == [("local", "a@v2", ["q3"]), ("local", "m", ["q3"])]
    assert result.candidate.metrics["exact_match"].settings["cached_answers"] == 3
    assert result.baseline is not None and result.baseline.metrics["exact_match"].value == 0.0
    # Another adapter version on the same base shares no answer with this one.
    other = replace(more, candidate=replace(planning.CANDIDATE, adapter_sha256="2" * 64))
    backends.calls.clear()
    runner_for(other).run()
    assert backends.calls[0] == ("local", "a@v2", ["q0", "q1", "q2", "q3"])


def test_nothing_is_cached_when_sampling_or_switched_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    backends = Backends(monkeypatch)
    sampled = {
        **GENERATE,
        "generation": {**GENERATE["generation"], "decoding": {"temperature": 0.7}},
    }
    off = {**GENERATE, "generation": {**GENERATE["generation"], "cache": False}}
    for suite in (sampled, sampled, off, off):
        runner_for(planning.plan(suite, n=2, baseline=None, cache_dir=tmp_path)).run()
    assert [len(c[2]) for c in backends.calls] == [2, 2, 2, 2]
    assert not (tmp_path / "generations").exists() or not any((tmp_path / "generations").iterdir())
