"""Slow tests against our server (``loraplex serve`` on vLLM, started here as a subprocess):
lm-eval ``local-completions`` agrees with in-process ``hf``+``peft``; the judge runs with a real
model; serving parity; generation through the server with concurrency."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from shared.basemodel import ResolvedBaseModel
from shared.registry.db import open_registry
from tests.evaluator import launch
from tests.evaluator.conftest import EXAMPLES, random_adapter, register_adapter

pytestmark = pytest.mark.slow

# Stated tolerance for in-process vs served scoring of the same task: per-item agreement of the
# multiple-choice answers >= 90% and accuracy within 0.1 (CPU vLLM kernels differ slightly).
MC_AGREEMENT = 0.9
ACC_TOLERANCE = 0.1


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
        version = register_adapter(
            settings, registry, random_adapter(data_dir.parent / "a", 9), "srv"
        )
        with launch.serve(data_dir, log_path=data_dir.parent / "server.log") as url:
            mp.setenv("LORAPLEX_SERVER_URL", url)
            yield {
                "url": url,
                "settings": EvaluatorSettings(),
                "registry": registry,
                "version": version,
            }
        registry.dispose()


def test_lmeval_local_completions_agrees_with_hf_peft(served: dict[str, Any]) -> None:
    suite = {"lmeval": {"enabled": True, "tasks": ["loraplex_general_mc"], "backend": "hf"}}
    results = {}
    for backend in ("hf", "local-completions"):
        suite["lmeval"]["backend"] = backend
        out = service.run_now(
            served["settings"],
            served["registry"],
            EvaluationCreate(
                candidate=served["version"],
                baseline="none",
                suite=suite,
                data=str(EXAMPLES / "test.jsonl"),
            ),
        )
        results[backend] = out.result.candidate
    hf, srv = results["hf"], results["local-completions"]
    name = "lmeval.loraplex_general_mc.acc"
    assert abs((hf.metrics[name].value or 0) - (srv.metrics[name].value or 1)) <= ACC_TOLERANCE
    hf_items = {i.item_id: i.values[name] for i in hf.items if name in i.values}
    srv_items = {i.item_id: i.values[name] for i in srv.items if name in i.values}
    agree = sum(hf_items[k] == srv_items.get(k) for k in hf_items) / len(hf_items)
    assert agree >= MC_AGREEMENT


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
    assert cand["parity.greedy_agreement"].ok
    assert cand["parity.max_logprob_diff"].ok and (cand["parity.max_logprob_diff"].value or 0) < 1.0
    assert cand["json_valid"].settings["backend"] == "server"
