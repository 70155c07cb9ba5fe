"""The reinforcement method (GRPO from a declarative grader): a tiny real run on the embedded model
registers a version with the grader in its manifest and reports reward and KL; the grader is TRL's
reward function; the KL reference is checked; bad graders and files are refused at submit with the
field named and nothing stored."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.trainer.config import TrainerSettings
from services.trainer.recipes.grpo import (
    GraderReward,
    ReferenceMismatch,
    check_reference,
    completion_text,
)
from services.trainer.recipes.saving import MANIFEST
from services.trainer.schemas import JobSpec
from shared.datasets import parse_file
from tests.trainer.api.requests import GOOD_SFT, _job, assert_refused, lines, snapshot, upload
from tests.trainer.conftest import order_chat, run_in_process, tiny_hyperparameters, write_jsonl

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo")]
STRING_CHECK = {
    "type": "string_check",
    "name": "capital",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "ilike",
}


def prompt_row(country: str, capital: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": f"What is the capital of {country}?"}],
        "answer": capital,
    }


def rl_method(grader: dict[str, Any] | None = None, **hp: Any) -> dict[str, Any]:
    return {
        "type": "reinforcement",
        "reinforcement": {"grader": grader or STRING_CHECK, "hyperparameters": hp},
    }


def test_prompt_records_keep_their_fields_for_the_grader() -> None:
    loaded, problems = parse_file(lines(*[prompt_row(*c) for c in CAPITALS]), "p.jsonl")
    assert problems.items == [] and loaded.kind == "prompt"
    assert loaded.examples[1].item == {"answer": "Rome"}
    assert loaded.examples[1].to_record() == prompt_row("Italy", "Rome")
    # A chat ending in an assistant turn stays supervised data; one file holds one kind.
    _, problems = parse_file(lines(prompt_row("France", "Paris"), order_chat(0)), "m")
    assert any("line 2: a sft record in a file of prompt records" in p for p in problems.items)


def test_the_grader_is_the_reward_function() -> None:
    spec = JobSpec.model_validate({"training_file": "f", "method": rl_method()})
    assert spec.method.reinforcement is not None
    reward = GraderReward(spec.method.reinforcement.grader)
    assert reward.__name__ == "capital"
    prompts = [[{"role": "user", "content": "Capital of France?"}]] * 2
    completions = [
        [{"role": "assistant", "content": "It is PARIS."}],
        [{"role": "assistant", "content": "Lyon"}],
    ]
    items = [json.dumps({"answer": "Paris"})] * 2
    assert reward(prompts=prompts, completions=completions, item_json=items) == [1.0, 0.0]
    assert reward.samples[0] == {
        "prompt": "Capital of France?",
        "completion": "It is PARIS.",
        "reward": 1.0,
    }
    assert completion_text("plain") == "plain"


def test_the_hyperparameters_resolve_to_grpo_defaults() -> None:
    spec = JobSpec.model_validate({"training_file": "f", "method": rl_method()})
    resolved = spec.resolved()
    assert resolved.beta == 0.04 and resolved.learning_rate == 1e-5
    params: Any = spec.params
    assert (params.num_generations, params.max_completion_length, params.temperature) == (4, 64, 1)
    assert spec.openai_hyperparameters()["beta"] == 0.04


class FakeParam:
    def __init__(self, value: float) -> None:
        self.data = SimpleNamespace(equal=lambda other: other.value == value, value=value)


def fake_model(adapters: dict[str, float]) -> Any:
    params = {f"layer.lora_A.{name}.weight": FakeParam(v) for name, v in adapters.items()}
    return SimpleNamespace(
        peft_config=dict.fromkeys(adapters), named_parameters=lambda: list(params.items())
    )


def test_the_kl_reference_must_be_the_starting_policy() -> None:
    assert check_reference(fake_model({"default": 0.0}), False, 0.04)["kind"] == "base"
    assert check_reference(fake_model({"default": 1.0}), True, 0.0)["kind"] == "none"
    found = check_reference(fake_model({"default": 1.0, "ref": 1.0}), True, 0.04)
    assert found["kind"] == "sft_adapter"
    with pytest.raises(ReferenceMismatch, match="bare base model"):
        check_reference(fake_model({"default": 1.0}), True, 0.04)  # no ref copy
    with pytest.raises(ReferenceMismatch, match="1 of 1 tensors differ"):
        check_reference(fake_model({"default": 1.0, "ref": 2.0}), True, 0.04)


# -- refused at submit -----------------------------------------------------------------------------
def _refused(
    client: TestClient, settings: TrainerSettings, body: dict[str, Any], *fragments: str
) -> dict[str, Any]:
    before = snapshot(settings)
    error = assert_refused(client.post("/v1/fine_tuning/jobs", json=body), 422, *fragments)
    assert snapshot(settings) == before
    return error


GOOD_PROMPTS = lines(*[prompt_row(*c) for c in CAPITALS])


@pytest.mark.parametrize(
    ("method", "param", "fragments"),
    [
        (
            rl_method({"type": "python", "source": "return 1.0"}),
            "method.reinforcement.grader",
            ["does not match any of the expected tags", "string_check"],
        ),
        (
            rl_method({"type": "score_model", "model": "rm@v1"}),
            "method.reinforcement.grader.model",
            ["adapter version 'rm@v1' does not exist"],
        ),
        (
            rl_method({**STRING_CHECK, "reference": "{{ item.answer.upper() }}"}),
            "method.reinforcement.grader.string_check.reference",
            ["is not allowed", "no expressions"],
        ),
        ({"type": "reinforcement"}, "method", ["method.reinforcement is required"]),
        (rl_method(num_generations=1), "method.reinforcement.hyperparameters.num_generations", []),
    ],
)
def test_a_bad_grader_is_refused_naming_the_field(
    client: TestClient,
    trainer_settings: TrainerSettings,
    method: dict[str, Any],
    param: str,
    fragments: list[str],
) -> None:
    file_id = upload(client, GOOD_PROMPTS).json()["id"]
    error = _refused(client, trainer_settings, _job(file_id, method=method), *fragments)
    assert error["param"] == param


def test_a_grader_naming_a_missing_field_is_refused_with_file_line_and_field(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    rows = [prompt_row(*c) for c in CAPITALS]
    del rows[2]["answer"]
    rows[2]["solution"] = "Madrid"
    file_id = upload(client, lines(*rows)).json()["id"]
    error = _refused(
        client,
        trainer_settings,
        _job(file_id, method=rl_method()),
        "train.jsonl line 3: missing field `answer`",
    )
    assert error["param"] == "training_file"


def test_a_reinforcement_job_on_chat_data_is_refused(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    file_id = upload(client, GOOD_SFT).json()["id"]
    error = _refused(
        client,
        trainer_settings,
        _job(file_id, method=rl_method()),
        "holds supervised (chat) data",
        "method 'reinforcement' needs prompts",
    )
    assert error["param"] == "training_file"


def test_a_reinforcement_job_on_prompts_is_accepted(client: TestClient) -> None:
    file_id = upload(client, GOOD_PROMPTS).json()["id"]
    resp = client.post("/v1/fine_tuning/jobs", json=_job(file_id, method=rl_method()))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["method"]["type"] == "reinforcement"
    assert body["method"]["reinforcement"]["grader"]["reference"] == "{{item.answer}}"
    assert body["hyperparameters"]["beta"] == 0.04


def _version(settings: TrainerSettings, name: str, base: str, manifest: dict[str, Any]) -> str:
    from shared.registry.adapters import NewVersion, register_version
    from shared.registry.db import open_registry
    from shared.registry.models import BaseModelRow

    registry = open_registry(settings)
    try:
        with registry.session() as session:
            if session.get(BaseModelRow, base) is None:
                session.add(BaseModelRow(name=base, weights_sha256="f" * 64, path="/m", source="t"))
            sha = hashlib.sha256(name.encode()).hexdigest()
            row, _ = register_version(session, NewVersion(name, sha, base, 4, 1, manifest))
            return row.id
    finally:
        registry.dispose()


REWARD_MANIFEST = {"method": "reward", "reward": {"pad_token_id": 2}}


@pytest.mark.parametrize(
    ("name", "base", "manifest", "fragment"),
    [
        ("chat", "smollm2-135m-instruct", {"method": "supervised"}, "is not a reward model"),
        ("rm", "other-base", REWARD_MANIFEST, "was trained on 'other-base', not the job's"),
    ],
)
def test_a_score_model_grader_needs_a_reward_model_on_the_jobs_base(
    client: TestClient,
    trainer_settings: TrainerSettings,
    name: str,
    base: str,
    manifest: dict[str, Any],
    fragment: str,
) -> None:
    version = _version(trainer_settings, name, base, manifest)
    file_id = upload(client, GOOD_PROMPTS).json()["id"]
    grader = {"type": "score_model", "name": "rm", "model": version}
    error = _refused(client, trainer_settings, _job(file_id, method=rl_method(grader)), fragment)
    assert error["param"] == "method.reinforcement.grader.model"


def test_a_score_model_grader_is_pinned_to_the_version_its_alias_named(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    from shared.registry.adapters import set_alias
    from shared.registry.db import open_registry

    version = _version(trainer_settings, "rm", "smollm2-135m-instruct", REWARD_MANIFEST)
    registry = open_registry(trainer_settings)
    with registry.session() as session:
        set_alias(session, "rm", "prod", version, actor="test")
    registry.dispose()
    file_id = upload(client, GOOD_PROMPTS).json()["id"]
    grader = {"type": "score_model", "name": "rm", "model": "rm:prod"}
    resp = client.post("/v1/fine_tuning/jobs", json=_job(file_id, method=rl_method(grader)))
    assert resp.status_code == 200, resp.text
    assert resp.json()["method"]["reinforcement"]["grader"]["model"] == "rm@v1"


# -- a real run ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_grpo_job_registers_with_its_grader_and_reports_reward_and_kl(
    trainer_model_settings: TrainerSettings, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", [prompt_row(*c) for c in CAPITALS])
    # The policy moves at step 1 only if the step's completions score differently (GRPO's
    # advantage is the reward minus the group mean): a graded similarity, four completions and a
    # hot temperature make a tie (no update, a KL of 0 at step 2) vanishingly rare on any CPU or
    # seed, where a pass/fail check on two completions tied often.
    grader = {
        "type": "text_similarity",
        "name": "capital",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "fuzzy_match",
    }
    hp = tiny_hyperparameters(
        batch_size=4,
        num_generations=4,
        temperature=2.0,
        max_completion_length=8,
        max_length=128,
        # A step large enough to move the policy at step 1, so step 2's KL is above zero.
        learning_rate=1e-3,
        warmup_ratio=0,
    )
    spec = {
        "method": rl_method(grader, **hp),
        "data": {"validation_fraction": 0},
        # No dropout: the KL at the first step is then exactly 0 against the right reference.
        "lora": {"lora_dropout": 0},
    }

    def reported(reporter: Any) -> list[dict[str, Any]]:
        return [e["data"] for e in reporter.events if e["data"] and "reward" in e["data"]]

    started = time.monotonic()
    result, reporter = run_in_process(trainer_model_settings, spec, data, adapter_name="rl")
    took = time.monotonic() - started

    assert result.version_id == "rl@v1"
    manifest = json.loads((result.adapter_dir / MANIFEST).read_text())
    assert manifest["method"] == "reinforcement"
    assert manifest["grader"] == grader
    assert manifest["reinforcement"]["reference"]["kind"] == "base"
    assert manifest["config"]["hyperparameters"]["beta"] == 0.04
    steps = reported(reporter)
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert 0.0 <= s["reward"] <= 1.0 and s["reward_std"] >= 0.0
        assert isinstance(s["kl"], float)
    # Step 1 samples the starting policy (KL 0); its completions scored differently, so the
    # update moved the policy and step 2 measures a KL above zero against the base.
    assert steps[0]["reward_std"] > 0.0, "step 1's completions tied: no update to measure"
    assert steps[0]["kl"] == 0.0 and steps[1]["kl"] > 0.0
    samples = [
        e["data"]["samples"] for e in reporter.events if e["data"] and "samples" in e["data"]
    ]
    assert samples and all(0 <= x["reward"] <= 1 for x in samples[0])
    assert manifest["metrics"]["reward_mean"] == pytest.approx(steps[-1]["reward"], abs=1e-6)

    # From a registered adapter, the KL is measured against that adapter (TRL's frozen "ref"
    # copy), not the bare base: at the first step it is 0 again, though rl@v1 is not the base.
    again, reporter2 = run_in_process(
        trainer_model_settings, {**spec, "base_adapter": "rl@v1"}, data, adapter_name="rl2"
    )
    continued = json.loads((again.adapter_dir / MANIFEST).read_text())
    assert continued["reinforcement"]["reference"]["kind"] == "sft_adapter"
    assert continued["base_adapter"]["id"] == "rl@v1"
    steps2 = reported(reporter2)
    assert steps2[0]["kl"] == 0.0
    print(
        f"GRPO runs: {took:.1f}s and {time.monotonic() - started - took:.1f}s; rewards "
        f"{[s['reward'] for s in steps]} then {[s['reward'] for s in steps2]}; kl "
        f"{[s['kl'] for s in steps]} then {[s['kl'] for s in steps2]}"
    )
