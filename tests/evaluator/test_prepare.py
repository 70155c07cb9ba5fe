"""`services.evaluator.prepare`: resolving a request into a run plan (the candidate, its default
baseline, the data from its lineage) before any run row exists, and the evidence a run records."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.policy import parse_policy
from services.evaluator.prepare import Prepared, new_run_id, prepare
from services.evaluator.runs import RUN_ID_RE
from services.evaluator.schemas import EvaluationCreate
from shared.errors import ValidationError
from shared.registry import adapters
from shared.registry.db import Registry
from tests.evaluator.conftest import EXAMPLES, random_adapter, register_adapter


def test_defaults_baseline_base_then_prod_and_lineage_data(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str, tmp_path: Path
) -> None:
    prepared = service.prepare(ev_settings, ev_registry, EvaluationCreate(candidate="shop@v1"))
    assert prepared.plan.baseline is not None and prepared.plan.baseline.is_base
    assert len(prepared.plan.data.items) == 60  # the validation file from the lineage
    v2 = register_adapter(
        ev_settings,
        ev_registry,
        random_adapter(tmp_path / "a2", 2),
        "shop",
        {"datasets": {"validation_file": None}},
    )
    with ev_registry.session() as session:
        adapters.set_alias(session, "shop", "prod", adapter_v1)
    req = EvaluationCreate(candidate=v2, data=str(EXAMPLES / "test.jsonl"), limit=5)
    prepared = service.prepare(ev_settings, ev_registry, req)
    assert prepared.plan.baseline is not None and prepared.plan.baseline.label == adapter_v1
    assert len(prepared.plan.items) == 5
    # bare name = its prod alias; name:alias; base
    for name, label in (
        ("shop", adapter_v1),
        ("shop:prod", adapter_v1),
        ("base", "smollm2-135m-instruct"),
    ):
        req = EvaluationCreate(candidate=name, data=str(EXAMPLES / "test.jsonl"))
        assert service.prepare(ev_settings, ev_registry, req).plan.candidate.label == label
    with pytest.raises(ValidationError, match="no validation file"):
        service.prepare(ev_settings, ev_registry, EvaluationCreate(candidate=v2))


def test_held_out_split_is_rebuilt_exactly_as_the_trainer_made_it(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    from shared.artifacts import open_store
    from shared.datasets.loading import load_examples
    from shared.datasets.prepare import prepare
    from shared.datasets.render import ChatRenderer

    train = EXAMPLES / "sft_train.jsonl"
    sha = open_store(ev_settings).put_file(train)
    manifest = {
        "datasets": {
            "training_file": {"id": None, "name": "sft_train.jsonl", "sha256": sha},
            "validation_file": None,
        },
        "config": {
            "spec": {"data": {"validation_fraction": 0.1, "near_duplicate_threshold": 0.85}},
            "hyperparameters": {"seed": 7},
        },
    }
    vid = register_adapter(
        ev_settings, ev_registry, random_adapter(tmp_path / "s", 4), "split", manifest
    )
    plan = service.prepare(ev_settings, ev_registry, EvaluationCreate(candidate=vid)).plan
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(plan.candidate.base.path))
    expected = prepare(
        load_examples(train), None, ChatRenderer(tok), kind="sft", seed=7, validation_fraction=0.1
    ).validation
    assert [i.item_id for i in plan.data.items] == [e.id for e in expected]
    assert [i.reference for i in plan.data.items] == [e.messages[-1].content for e in expected]


def test_run_ids_are_fresh_and_match_the_id_rule() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"eval-[0-9a-f]{16}", i) and RUN_ID_RE.fullmatch(i) for i in ids)


def test_evidence_names_the_subjects_and_the_policy_hash() -> None:
    policy = parse_policy("metrics:\n  exact_match: {min: 0.5}\n")
    plan = SimpleNamespace(
        candidate=SimpleNamespace(token="shop@v2"), baseline=SimpleNamespace(token="shop@v1")
    )
    prepared = Prepared(cast(Any, plan), policy, "prod", "shop@v1")
    assert prepared.evidence() == {
        "candidate_version": "shop@v2",
        "baseline_version": "shop@v1",
        "policy_sha256": policy.sha256(),
    }
    alone = Prepared(
        cast(Any, SimpleNamespace(candidate=plan.candidate, baseline=None)), None, None, None
    )
    assert alone.evidence() == {
        "candidate_version": "shop@v2",
        "baseline_version": None,
        "policy_sha256": None,
    }


def test_baseline_none_promoting_base_and_fewshot_of_an_adapter(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    no_baseline = EvaluationCreate(candidate=adapter_v1, baseline="None")
    assert prepare(ev_settings, ev_registry, no_baseline).plan.baseline is None
    with pytest.raises(ValidationError, match="only an adapter version can be promoted"):
        prepare(ev_settings, ev_registry, EvaluationCreate(candidate="base", promote="prod"))
    fewshot = EvaluationCreate(candidate=adapter_v1, baseline=f"{adapter_v1}+fewshot:2")
    with pytest.raises(ValidationError, match="few-shot prompting is a baseline of a base model"):
        prepare(ev_settings, ev_registry, fewshot)
    alias = prepare(
        ev_settings, ev_registry, EvaluationCreate(candidate=adapter_v1, promote="prod")
    )
    assert (alias.promote, alias.alias_expected, alias.protected) == ("prod", None, False)
