"""`services.trainer.capacity`: a full fine-tune that cannot fit the machine is refused when the job
is created (422 naming ``adapter``, with the LoRA and QLoRA estimates that would fit), and nothing
is stored; one that fits, or any LoRA job, is created.

The machine is made small with the planner's own seam, ``memory_limit_bytes``; the base model is a
small Llama-shaped folder written here (its safetensors headers are what the planner reads).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.trainer.capacity import SMALLEST_PASS_TOKENS, base_folder, smallest_full_step
from services.trainer.config import TrainerSettings
from services.trainer.schemas import JobSpec
from shared.memory import GIB, ModelShape, estimate_plan
from shared.settings import EMBEDDED_BASE_MODEL, SharedSettings
from tests.trainer.api.requests import GOOD_SFT, _job, assert_refused, snapshot, upload

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "tie_word_embeddings": True,
}


def write_base(folder: Path) -> Path:
    """A Llama-shaped base folder (bf16 zeros: only the shapes matter to the planner)."""
    import torch
    from safetensors.torch import save_file

    h, i, v = (
        int(CONFIG["hidden_size"]),
        int(CONFIG["intermediate_size"]),
        int(CONFIG["vocab_size"]),
    )
    tensors = {"model.embed_tokens.weight": torch.zeros(v, h), "model.norm.weight": torch.zeros(h)}
    for layer in range(int(CONFIG["num_hidden_layers"])):
        prefix = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{prefix}.self_attn.{name}.weight"] = torch.zeros(h, h)
        tensors[f"{prefix}.mlp.gate_proj.weight"] = torch.zeros(i, h)
        tensors[f"{prefix}.mlp.up_proj.weight"] = torch.zeros(i, h)
        tensors[f"{prefix}.mlp.down_proj.weight"] = torch.zeros(h, i)
        tensors[f"{prefix}.input_layernorm.weight"] = torch.zeros(h)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = torch.zeros(h)
    folder.mkdir(parents=True)
    save_file({k: t.to(torch.bfloat16) for k, t in tensors.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


def full_job(file_id: str, **extra: Any) -> dict[str, Any]:
    return _job(file_id, adapter="none", **extra)


def plans(limit: int | None = None) -> dict[str, int]:
    """The planner's estimates of this base's smallest full step and its LoRA/QLoRA variants."""
    shape = ModelShape.from_config(CONFIG)
    full = smallest_full_step(JobSpec.model_validate({"training_file": "f", "adapter": "none"}))
    lora = replace(full, full=False)
    return {
        "full": estimate_plan(shape, full, limit).total,
        "lora": estimate_plan(shape, lora, limit).total,
        "qlora": estimate_plan(shape, replace(lora, quantization="nf4"), limit).total,
    }


@pytest.fixture
def small_machine(settings: SharedSettings) -> Iterator[tuple[TestClient, TrainerSettings]]:
    """An API whose machine fits this base's LoRA job but not its full fine-tune."""
    from services.trainer.api.app import create_app

    write_base(settings.models_dir / EMBEDDED_BASE_MODEL)
    need = plans()
    assert need["qlora"] < need["lora"] < need["full"]
    limit = (need["lora"] + need["full"]) // 2
    trainer = TrainerSettings(data_dir=settings.data_dir, memory_limit_bytes=limit)
    with TestClient(create_app(trainer)) as client:
        yield client, trainer


def test_the_smallest_full_step_is_one_short_checkpointed_sequence() -> None:
    step = smallest_full_step(JobSpec.model_validate({"training_file": "f", "adapter": "none"}))
    assert step.full and step.batch_size == 1 and step.gradient_checkpointing
    assert step.seq_len == SMALLEST_PASS_TOKENS and step.weight_bytes == 4
    short = JobSpec.model_validate(
        {
            "training_file": "f",
            "adapter": "none",
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"max_length": 64, "precision": "bf16"}},
            },
        }
    )
    assert smallest_full_step(short).seq_len == 64 and smallest_full_step(short).weight_bytes == 2


def test_a_full_job_that_cannot_fit_is_refused_naming_adapter_with_lora_and_qlora_numbers(
    small_machine: tuple[TestClient, TrainerSettings],
) -> None:
    client, settings = small_machine
    file_id = upload(client, GOOD_SFT).json()["id"]
    before = snapshot(settings)
    error = assert_refused(
        client.post("/v1/fine_tuning/jobs", json=full_job(file_id)),
        422,
        "full fine-tuning (adapter 'none') needs about",
        "would fit: LoRA: adapter 'lora'",
        "QLoRA: adapter 'lora' (lora.r 16) with lora.quantization 'nf4'",
    )
    assert error["param"] == "adapter" and error["code"] == "invalid_job"
    assert snapshot(settings) == before
    # The numbers are the planner's, as it would plan the LoRA and QLoRA jobs.
    need = plans()
    quoted = [float(x) for x in re.findall(r"about (\d+\.\d) GiB", error["message"])]
    assert quoted == [round(need[k] / GIB, 1) for k in ("full", "lora", "qlora")]
    # The same job with a LoRA fits and is created.
    assert client.post("/v1/fine_tuning/jobs", json=_job(file_id)).status_code == 200


def test_when_not_even_qlora_fits_the_refusal_says_so(settings: SharedSettings) -> None:
    from services.trainer.api.app import create_app

    write_base(settings.models_dir / EMBEDDED_BASE_MODEL)
    limit = plans()["qlora"] - 1
    trainer = TrainerSettings(data_dir=settings.data_dir, memory_limit_bytes=limit)
    with TestClient(create_app(trainer)) as client:
        file_id = upload(client, GOOD_SFT).json()["id"]
        error = assert_refused(
            client.post("/v1/fine_tuning/jobs", json=full_job(file_id)),
            422,
            "nothing fits this machine, not even QLoRA",
        )
    assert error["param"] == "adapter" and "would fit" not in error["message"]


def test_a_full_job_that_fits_is_created_and_shown_as_full(settings: SharedSettings) -> None:
    from services.trainer.api.app import create_app

    write_base(settings.models_dir / EMBEDDED_BASE_MODEL)
    trainer = TrainerSettings(data_dir=settings.data_dir, memory_limit_bytes=plans()["full"])
    with TestClient(create_app(trainer)) as client:
        file_id = upload(client, GOOD_SFT).json()["id"]
        resp = client.post("/v1/fine_tuning/jobs", json=full_job(file_id))
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["adapter"] == "none" and job["lora"] is None
    assert job["adapter_name"] == f"{EMBEDDED_BASE_MODEL}-sft-full"
    # Full fine-tuning's own default rate (a tenth of LoRA's) is what the multiplier scales.
    assert job["hyperparameters"]["learning_rate_multiplier"] == 1.0


def test_a_base_not_prepared_yet_is_left_to_the_worker(settings: SharedSettings) -> None:
    trainer = TrainerSettings(data_dir=settings.data_dir)
    from shared.registry.db import open_registry

    registry = open_registry(trainer)
    try:
        with registry.session() as session:
            assert base_folder(session, trainer, EMBEDDED_BASE_MODEL) is None
            write_base(trainer.models_dir / EMBEDDED_BASE_MODEL)
            assert base_folder(session, trainer, EMBEDDED_BASE_MODEL) is not None
            assert base_folder(session, trainer, "unregistered") is None
    finally:
        registry.dispose()
