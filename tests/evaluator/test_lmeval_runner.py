"""The shipped lm-eval task YAMLs load offline through lm-eval's own TaskManager."""

from __future__ import annotations

import pytest

from services.evaluator.lmeval_runner import shipped_tasks
from services.evaluator.suite import TASKS_DIR


def test_shipped_tasks_load_with_lm_eval_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(TASKS_DIR)  # the YAMLs name their data relative to this folder
    from lm_eval.tasks import TaskManager, get_task_dict

    names = sorted(shipped_tasks())
    assert names == ["loraplex_extract_gen", "loraplex_extract_ppl", "loraplex_general_mc"]
    tasks = get_task_dict(names, TaskManager(include_path=str(TASKS_DIR)))
    sizes = {name: len(list(task.test_docs())) for name, task in tasks.items()}
    assert sizes == {
        "loraplex_extract_gen": 60,
        "loraplex_extract_ppl": 60,
        "loraplex_general_mc": 418,  # tasks/build_general_mc.py
    }
    gen = tasks["loraplex_extract_gen"]
    doc = next(iter(gen.test_docs()))
    assert gen.doc_to_text(doc).endswith("<|im_start|>assistant\n")
    scores = gen.process_results(doc, [doc["reference"]])
    assert scores == {"exact_match": 1.0, "json_match": 1.0, "json_valid": 1.0}


def test_hf_runs_a_full_fine_tune_from_its_folder_and_a_lora_on_its_base() -> None:
    from dataclasses import replace
    from pathlib import Path

    from services.evaluator.lmeval_runner import model_args
    from tests.evaluator import planning

    plan = planning.plan({"lmeval": {"enabled": True, "tasks": ["loraplex_extract_ppl"]}})
    lora = replace(planning.CANDIDATE, adapter_path=Path("/store/lora"))
    full = replace(lora, adapter_path=Path("/store/full"), manifest={"kind": "full"})
    assert model_args(plan, lora, False)[1]["pretrained"] == str(planning.BASE.path)
    assert model_args(plan, lora, False)[1]["peft"] == "/store/lora"
    backend, args = model_args(plan, full, False)
    assert backend == "hf" and args["pretrained"] == "/store/full" and "peft" not in args
    assert model_args(plan, planning.BARE, False)[1] == {
        "pretrained": str(planning.BASE.path),
        "dtype": plan.suite.dtype,
        "device": "cpu",
    }
