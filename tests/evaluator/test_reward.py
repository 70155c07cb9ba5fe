"""``reward.score`` (services.evaluator.reward): a suite names a registered reward model, each
subject's answers are scored with it as the trainer scored its pairs, and the gate pairs the
scores item by item. A version that is not a reward model is refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.evaluator import reward, service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from shared.basemodel import resolve_base_model
from shared.errors import LoraplexError, NotFoundError, ValidationError
from shared.registry.db import Registry
from tests.conftest import random_reward_adapter

from .conftest import random_adapter, register_adapter

PAD = 2  # the pad id the reward model was "trained" with


def reward_adapter(settings: EvaluatorSettings, folder: Path, seed: int) -> Path:
    base_dir = resolve_base_model(settings, settings.base_model).path
    return random_reward_adapter(base_dir, folder, seed, PAD)


def _manifest(method: str = "reward") -> dict[str, Any]:
    return {"method": method, "reward": {"pad_token_id": PAD, "heldout_pair_accuracy": 0.5}}


@pytest.mark.parametrize(
    ("name", "error", "why"),
    [
        (None, ValidationError, "the reward component needs a reward model"),
        ("base", ValidationError, "is a base model; name a version trained with method 'reward'"),
        ("chat@v1", ValidationError, "chat@v1 cannot score answers: it was trained with method"),
        ("nope@v1", NotFoundError, "unknown suite.reward.model 'nope@v1'"),
    ],
)
def test_what_is_not_a_reward_model_is_refused_naming_the_field(
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    tmp_path: Path,
    name: str | None,
    error: type[LoraplexError],
    why: str,
) -> None:
    register_adapter(
        ev_settings, ev_registry, random_adapter(tmp_path / "c"), "chat", _manifest("supervised")
    )
    with pytest.raises(error, match=why) as caught, ev_registry.read_session() as session:
        reward.resolve(ev_settings, session, name)
    assert caught.value.param == "suite.reward.model"
    assert 400 <= caught.value.status_code < 500


def test_a_full_fine_tune_is_refused_as_a_reward_model(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")  # never loaded: refused before
    manifest = {**_manifest(), "kind": "full"}
    version = register_adapter(ev_settings, ev_registry, folder, "rm", manifest)
    with (
        pytest.raises(ValidationError, match="is a full fine-tune; a reward model") as caught,
        ev_registry.read_session() as session,
    ):
        reward.resolve(ev_settings, session, version)
    assert caught.value.param == "suite.reward.model"


@pytest.mark.slow
def test_answers_are_scored_by_the_reward_model_and_paired_by_the_gate(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = register_adapter(
        ev_settings, ev_registry, reward_adapter(ev_settings, tmp_path / "rm", 3), "rm", _manifest()
    )
    # A candidate that clearly answers differently from the base (every linear layer, 0.1).
    strong = random_adapter(
        tmp_path / "cand",
        5,
        modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        scale=0.1,
    )
    cand = register_adapter(ev_settings, ev_registry, strong, "shop")
    data = tmp_path / "eval.jsonl"
    rows: list[dict[str, Any]] = [
        {
            "messages": [{"role": "user", "content": f"Name a colour number {i}."}],
            "reference": "red",
        }
        for i in range(6)
    ]
    rows.append({"messages": [{"role": "user", "content": "word " * 100}], "reference": "x"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = {
        "name": "rewarded",
        "generation": {
            "enabled": True,
            "backend": "local",
            "metrics": ["exact_match"],
            "decoding": {"max_new_tokens": 6, "temperature": 0.0},
        },
        "reward": {"enabled": True, "model": rm, "max_length": 80},
        "contamination": {"enabled": False},
    }
    policy = "name: r\nmin_items: 3\nmetrics:\n  reward.score: {max_regression: 1000}\n"
    request = EvaluationCreate(
        candidate=cand, baseline="base", data=str(data), suite=suite, policy=policy
    )
    outcome = service.run_now(ev_settings, ev_registry, request)
    result = outcome.result
    assert result.baseline is not None
    assert outcome.gate is not None
    assert any("reward.score" in line for line in outcome.gate.reasons), outcome.gate.reasons

    # Recomputed independently: the chat template's own tokenisation and a plain peft load.
    base_dir = resolve_base_model(ev_settings, ev_settings.base_model).path
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    net = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, dtype=torch.float32
    )
    net.config.pad_token_id = PAD
    model = PeftModel.from_pretrained(net, tmp_path / "rm").eval()
    scored: dict[str, list[float]] = {}
    for subject in (result.candidate, result.baseline):
        metric = subject.metrics["reward.score"]
        assert metric.error is None and metric.paired and metric.higher_is_better
        assert metric.n == 6 and metric.settings["too_long"] == 1  # the 100-word item left out
        assert metric.settings["reward_model"] == rm
        values = []
        for item, row in zip(subject.items, rows, strict=True):
            got = item.values.get("reward.score")
            conversation: list[dict[str, str]] = [
                *row["messages"],
                {"role": "assistant", "content": item.output},
            ]
            text = tokenizer.apply_chat_template(conversation, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if ids.shape[1] > 80:
                assert got is None
                continue
            with torch.no_grad():
                expected = float(model(input_ids=ids).logits.view(-1)[0])
            assert got == pytest.approx(expected, abs=1e-4)
            values.append(expected)
        scored[subject.role] = values
    # Different answers, different scores: the metric reads each subject's own answers.
    pairs = zip(result.candidate.items, result.baseline.items, strict=True)
    assert any(c.output != b.output for c, b in pairs)
    assert scored["candidate"] != scored["baseline"]
