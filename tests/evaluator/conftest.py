"""Evaluator fixtures: settings on a fresh data dir with the embedded model, and a registered
adapter version made of random LoRA weights (no training, no model load); bare settings and a
registry without the model, for tests that never resolve one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.evaluator.config import EvaluatorSettings
from shared.artifacts import open_store
from shared.basemodel import resolve_base_model
from shared.registry.adapters import NewVersion, register_version
from shared.registry.db import Registry, open_registry
from shared.settings import SharedSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "extraction"


# SmolLM2-135M's linear layers: (module path under a decoder layer, output dim, input dim).
SMOL_LINEAR = {
    "q_proj": ("self_attn", 576, 576),
    "k_proj": ("self_attn", 192, 576),
    "v_proj": ("self_attn", 192, 576),
    "o_proj": ("self_attn", 576, 576),
    "gate_proj": ("mlp", 1536, 576),
    "up_proj": ("mlp", 1536, 576),
    "down_proj": ("mlp", 576, 1536),
}


def random_adapter(
    folder: Path,
    seed: int = 0,
    rank: int = 4,
    *,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    scale: float = 0.01,
) -> Path:
    """A PEFT LoRA folder for SmolLM2-135M with random weights (std ``scale``) on ``modules``.

    The defaults (q/v, 0.01) barely move the model: fine where only the plumbing matters. Tests
    that must tell the adapter's answers from the base's use :data:`STRONG` settings."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(30):
        for proj in modules:
            block, out_dim, in_dim = SMOL_LINEAR[proj]
            prefix = f"base_model.model.model.layers.{layer}.{block}.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_dim, generator=gen) * scale
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * scale
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": rank,
                "lora_alpha": 2 * rank,
                "lora_dropout": 0.0,
                "target_modules": list(modules),
                "bias": "none",
                "base_model_name_or_path": "smollm2-135m-instruct",
                "fan_in_fan_out": False,
                "inference_mode": True,
                "init_lora_weights": True,
            }
        )
    )
    return folder


def register_adapter(
    settings: SharedSettings,
    registry: Registry,
    folder: Path,
    name: str,
    manifest: dict[str, Any] | None = None,
) -> str:
    store = open_store(settings)
    sha = store.put_dir(folder)
    with registry.session() as session:
        base = resolve_base_model(settings, settings.base_model, session=session)
        row, _ = register_version(
            session,
            NewVersion(
                adapter_name=name,
                sha256=sha,
                base_model=base.name,
                rank=4,
                size_bytes=1,
                manifest=manifest or {},
            ),
        )
        return row.id


@pytest.fixture
def bare_settings(settings: SharedSettings) -> EvaluatorSettings:
    """Evaluator settings on a fresh data dir (the environment cleared), no model in it."""
    return EvaluatorSettings()


@pytest.fixture
def bare_registry(bare_settings: EvaluatorSettings) -> Iterator[Registry]:
    reg = open_registry(bare_settings)
    yield reg
    reg.dispose()


@pytest.fixture
def ev_settings(model_settings: SharedSettings) -> EvaluatorSettings:
    return EvaluatorSettings()


@pytest.fixture
def ev_registry(ev_settings: EvaluatorSettings) -> Iterator[Registry]:
    reg = open_registry(ev_settings)
    yield reg
    reg.dispose()


@pytest.fixture
def validation_file(ev_settings: EvaluatorSettings) -> dict[str, str]:
    store = open_store(ev_settings)
    path = EXAMPLES / "test.jsonl"
    return {"id": "file-val", "name": "test.jsonl", "sha256": store.put_file(path)}


@pytest.fixture
def adapter_v1(
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    tmp_path: Path,
    validation_file: dict[str, str],
) -> str:
    manifest = {
        "schema": "loraplex.adapter/v1",
        "datasets": {"training_file": None, "validation_file": validation_file},
        "loss_curve": [[1, 2.0], [2, 1.5], [3, 1.2]],
    }
    return register_adapter(
        ev_settings, ev_registry, random_adapter(tmp_path / "a1", 1), "shop", manifest
    )
