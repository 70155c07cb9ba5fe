"""Slow tests against our server (``loraplex serve`` on vLLM, started here as a subprocess):
lm-eval ``local-completions`` agrees with in-process ``hf``+``peft``; the judge runs with a real
model; serving parity; generation through the server with concurrency.

The served adapter moves the model a lot (every linear layer, weights of scale 0.1: greedy replies
and multiple-choice answers differ from the base's), and each agreement check is also run against
a server answering with the bare base for the adapter's in-process answers: the check must fail
there, or it could not catch a server that silently drops the adapter."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import pytest

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.plan import RunPlan
from services.evaluator.results import ItemResult, MetricResult, SubjectResult
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.subjects import Subject
from shared.basemodel import ResolvedBaseModel
from shared.registry.db import open_registry
from tests.evaluator import launch
from tests.evaluator.conftest import EXAMPLES, SMOL_LINEAR, random_adapter, register_adapter

pytestmark = pytest.mark.slow

# Stated tolerance for in-process vs served scoring of the same task: per-item agreement of the
# multiple-choice answers >= 90% and accuracy within 0.1 (CPU vLLM kernels differ slightly).
MC_AGREEMENT = 0.9
ACC_TOLERANCE = 0.1
# Serving parity: the served tokens' log-probabilities within 1 nat of the in-process ones, and
# at least half the greedy replies identical (near-ties may still split a reply or two).
LOGPROB_BOUND = 1.0
GREEDY_AGREEMENT = 0.5


class ServedAsBase(Subject):
    """The adapter in process, but the server asked for the bare base: what a server that drops
    the adapter answers. Controls only."""

    @property
    def served_name(self) -> str:
        return self.base.name


def served_as_base(subject: Subject) -> Subject:
    return ServedAsBase(**{f.name: getattr(subject, f.name) for f in fields(subject)})


def _alone(served: dict[str, Any], suite: dict[str, Any], **extra: Any) -> EvaluationCreate:
    """The served adapter on the example test set, without a baseline."""
    return EvaluationCreate(
        candidate=served["version"],
        baseline="none",
        suite=suite,
        data=str(EXAMPLES / "test.jsonl"),
        **extra,
    )


def _plan(served: dict[str, Any], suite: dict[str, Any], **extra: Any) -> RunPlan:
    prepared = service.prepare(
        served["settings"],
        served["registry"],
        _alone(served, suite, **extra),
        check_endpoints=False,
        local=True,
    )
    return prepared.plan


def mc_check(hf: SubjectResult, srv: SubjectResult) -> list[str]:
    """What is wrong with the served multiple-choice answers (nothing: they agree)."""
    name = "lmeval.loraplex_general_mc.acc"
    problems = []
    gap = abs((hf.metrics[name].value or 0) - (srv.metrics[name].value or 1))
    if gap > ACC_TOLERANCE:
        problems.append(f"accuracy differs by {gap:.2f}")
    hf_items = {i.item_id: i.values[name] for i in hf.items if name in i.values}
    srv_items = {i.item_id: i.values[name] for i in srv.items if name in i.values}
    agree = sum(hf_items[k] == srv_items.get(k) for k in hf_items) / len(hf_items)
    if agree < MC_AGREEMENT:
        problems.append(f"per-item agreement {agree:.2f}")
    return problems


def parity_check(metrics: dict[str, MetricResult]) -> list[str]:
    """What is wrong with serving parity (nothing: the server serves what we evaluate)."""
    problems = []
    diff = metrics["parity.max_logprob_diff"]
    if not diff.ok or (diff.value or 0) >= LOGPROB_BOUND:
        problems.append(f"max log-prob diff {diff.value}")
    agree = metrics["parity.greedy_agreement"]
    if not agree.ok or (agree.value or 0) < GREEDY_AGREEMENT:
        problems.append(f"greedy agreement {agree.value}")
    return problems


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, base_model: ResolvedBaseModel
) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("served") / "data"
    (data_dir / "models").mkdir(parents=True)
    shutil.copytree(
        base_model.path, data_dir / "models" / base_model.path.name, copy_function=os.link
    )
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("LORAPLEX_") and not key.startswith("LORAPLEX_TEST"):
                mp.delenv(key)
        mp.setenv("LORAPLEX_DATA_DIR", str(data_dir))
        settings = EvaluatorSettings()
        registry = open_registry(settings)
        strong = random_adapter(data_dir.parent / "a", 9, modules=tuple(SMOL_LINEAR), scale=0.1)
        version = register_adapter(settings, registry, strong, "srv")
        # float32 like the in-process model: the checks compare adapters, not bf16 rounding.
        with launch.serve(
            data_dir, log_path=data_dir.parent / "server.log", env={"LORAPLEX_DTYPE": "float32"}
        ) as url:
            mp.setenv("LORAPLEX_SERVER_URL", url)
            yield {
                "url": url,
                "settings": EvaluatorSettings(),
                "registry": registry,
                "version": version,
            }
        registry.dispose()


def test_lmeval_local_completions_agrees_with_hf_peft(served: dict[str, Any]) -> None:
    # 80 of the 418 questions: enough for the agreement bound, a fifth of the time on 2 cores.
    suite = {
        "lmeval": {"enabled": True, "tasks": ["loraplex_general_mc"], "backend": "hf", "limit": 80}
    }
    results = {}
    for backend in ("hf", "local-completions"):
        suite["lmeval"]["backend"] = backend
        out = service.run_now(served["settings"], served["registry"], _alone(served, suite))
        results[backend] = out.result.candidate
    hf, srv = results["hf"], results["local-completions"]
    assert mc_check(hf, srv) == []
    # Control: the same task through the server answering with the bare base must fail the check.
    from services.evaluator import lmeval_runner

    suite["lmeval"]["backend"] = "local-completions"
    plan = _plan(served, suite)
    bare = SubjectResult(role="candidate", model="bare base")
    lmeval_runner.run_tasks(plan, served_as_base(plan.candidate), bare, lambda n: None)
    problems = mc_check(hf, bare)
    assert len(problems) == 2, problems  # accuracy and per-item agreement both fail


def test_judge_with_a_real_model_and_serving_parity(served: dict[str, Any]) -> None:
    suite = {
        "generation": {
            "enabled": True,
            "decoding": {"max_new_tokens": 32},
            "backend": "server",
            "metrics": ["json_valid", "token_f1"],
        },
        "judge": {
            "enabled": True,
            "modes": ["pairwise", "rubric"],
            "anchors": 4,
            "model": "smollm2-135m-instruct",
            "max_tokens": 64,
        },
        "parity": {"enabled": True, "items": 4, "max_new_tokens": 16},
    }
    out = service.run_now(
        served["settings"],
        served["registry"],
        EvaluationCreate(
            candidate=served["version"], suite=suite, data=str(EXAMPLES / "test.jsonl"), limit=6
        ),
    )
    judge = out.result.judge
    assert judge is not None and judge.pairs == 6 and judge.anchors == 4
    assert judge.flip_rate is not None and 0.0 <= judge.flip_rate <= 1.0
    assert judge.judge_model == "smollm2-135m-instruct"
    cand = out.result.candidate.metrics
    assert cand["judge.win_rate"].ok and cand["judge.anchor_accuracy"].ok
    # A 135M judge is a weak judge: whatever it says, the run reports how (un)reliable it was.
    assert parity_check(cand) == []
    assert cand["json_valid"].settings["backend"] == "server"
    # Control: the adapter in process, the bare base through the server: parity must fail on both
    # counts (the replies differ, and the base's tokens are far less likely under the adapter).
    from services.evaluator import parity
    from services.evaluator.local_model import LocalModels

    plan = _plan(served, {"parity": suite["parity"]}, limit=6)
    control = served_as_base(plan.candidate)
    items = plan.items
    bare = SubjectResult(
        role="candidate",
        model="bare base",
        items=[ItemResult(item_id=i.item_id, item_hash=i.item_hash) for i in items],
    )
    models = LocalModels(control, dtype=plan.suite.dtype)
    parity.run(models, _with_candidate(plan, control), bare, items, lambda n: None)
    problems = parity_check(bare.metrics)
    assert len(problems) == 2, problems
    assert bare.metrics["parity.greedy_agreement"].value == 0.0


def _with_candidate(plan: RunPlan, subject: Subject) -> RunPlan:
    from dataclasses import replace

    return replace(plan, candidate=subject)
