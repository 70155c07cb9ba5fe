"""Servability rules: every reason an adapter cannot be served, found before training and loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from shared.basemodel import ResolvedBaseModel
from shared.servability import (
    LoraLimits,
    adapter_is_noop,
    base_linear_shapes,
    check_adapter_dir,
    check_full_model_dir,
    check_lora_settings,
)

MODULE = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def shapes(base_model: ResolvedBaseModel) -> dict[str, tuple[int, ...]]:
    return base_linear_shapes(base_model.path)


def make_adapter(
    folder: Path,
    shapes: dict[str, tuple[int, ...]],
    *,
    r: int = 8,
    config: dict[str, Any] | None = None,
    modules: tuple[str, ...] = (MODULE,),
    extra: dict[str, torch.Tensor] | None = None,
    zero_b: bool = False,
) -> Path:
    folder.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        out_f, in_f = shapes.get(module, (64, 64))
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(r, in_f)
        b = torch.zeros(out_f, r) if zero_b else torch.randn(out_f, r)
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
    tensors.update(extra or {})
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 16,
        "target_modules": ["q_proj"],
        "bias": "none",
        "base_model_name_or_path": "smollm2-135m-instruct",
    }
    cfg.update(config or {})
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def test_good_adapter_has_no_reasons(tmp_path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    folder = make_adapter(tmp_path / "ok", shapes)
    assert check_adapter_dir(folder, base_shapes=shapes) == []
    assert not adapter_is_noop(folder)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"config": {"r": 64}, "r": 64}, "above the server's max LoRA rank 16"),
        ({"config": {"use_dora": True}}, "DoRA"),
        ({"config": {"bias": "all"}}, "bias = 'all'"),
        ({"config": {"modules_to_save": ["lm_head"]}}, "modules_to_save"),
        ({"config": {"peft_type": "IA3"}}, "only LORA adapters"),
        ({"config": {"target_modules": ["nonexistent_proj"]}}, "'nonexistent_proj' does not exist"),
        ({"modules": ("model.layers.99.self_attn.q_proj",)}, "does not exist in the base model"),
        ({"extra": {"base_model.model.model.embed_tokens.weight": torch.zeros(2, 2)}}, "embedding"),
    ],
)
def test_unservable_adapters_are_refused_with_a_reason(
    tmp_path: Path, shapes: dict[str, tuple[int, ...]], kwargs: dict[str, Any], needle: str
) -> None:
    folder = make_adapter(tmp_path / "bad", shapes, **kwargs)
    reasons = check_adapter_dir(folder, base_shapes=shapes, limits=LoraLimits(max_rank=16))
    assert any(needle in r for r in reasons), reasons


def test_shapes_of_another_model_are_refused(
    tmp_path: Path, shapes: dict[str, tuple[int, ...]]
) -> None:
    tiny: dict[str, tuple[int, ...]] = {MODULE: (64, 64)}
    folder = make_adapter(tmp_path / "other", tiny)
    reasons = check_adapter_dir(folder, base_shapes=shapes)
    assert any("does not fit the base model's" in r for r in reasons), reasons


def test_broken_files_are_reported_not_raised(
    tmp_path: Path, shapes: dict[str, tuple[int, ...]]
) -> None:
    folder = make_adapter(tmp_path / "broken", shapes)
    (folder / "adapter_config.json").write_text("{not json")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    reasons = check_adapter_dir(folder, base_shapes=shapes)
    assert any("adapter_config.json is unreadable" in r for r in reasons)
    assert any("unreadable or truncated" in r for r in reasons)
    missing = tmp_path / "empty"
    missing.mkdir()
    assert len(check_adapter_dir(missing)) == 2


def test_all_reasons_are_listed_not_only_the_first(
    tmp_path: Path, shapes: dict[str, tuple[int, ...]]
) -> None:
    folder = make_adapter(
        tmp_path / "many", shapes, config={"use_dora": True, "bias": "all", "r": 32}, r=32
    )
    assert len(check_adapter_dir(folder, base_shapes=shapes)) >= 3


def test_zero_b_adapter_is_a_noop(tmp_path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    assert adapter_is_noop(make_adapter(tmp_path / "zero", shapes, zero_b=True))


def test_settings_check_before_training() -> None:
    assert check_lora_settings(r=16) == []
    reasons = check_lora_settings(
        r=32, use_dora=True, bias="lora_only", modules_to_save=["embed_tokens"], added_tokens=["x"]
    )
    assert len(reasons) == 5
    assert check_lora_settings(r=32, limits=LoraLimits(max_rank=64)) == []


# -- full models -----------------------------------------------------------------------------------
TINY: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "tie_word_embeddings": True,
}


def tiny_model_dir(
    folder: Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16, **config: Any
) -> Path:
    """A complete tiny Llama folder: weights, config, generation config, tokenizer stand-ins."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(LlamaConfig(**{**TINY, **config}))
    model.to(dtype).save_pretrained(str(folder))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    return folder


def test_a_fine_tune_of_the_base_has_no_reasons(tmp_path: Path) -> None:
    base = tiny_model_dir(tmp_path / "base")
    tuned = tiny_model_dir(tmp_path / "tuned", seed=1)  # other weights, same architecture
    assert check_full_model_dir(tuned, base) == []


def test_another_architecture_is_refused_by_config_and_by_tensor_shapes(tmp_path: Path) -> None:
    base = tiny_model_dir(tmp_path / "base")
    wider = tiny_model_dir(tmp_path / "wider", hidden_size=64)
    reasons = check_full_model_dir(wider, base)
    assert "config.json hidden_size is 64, the base model's is 32" in reasons
    assert any(
        r.startswith("tensor model.embed_tokens.weight has shape (128, 64)") for r in reasons
    )
    deeper = tiny_model_dir(tmp_path / "deeper", num_hidden_layers=3)
    reasons = check_full_model_dir(deeper, base)
    assert any("tensors the base model lacks: model.layers.2." in r for r in reasons)
    shallower = check_full_model_dir(base, deeper)
    assert any(r.startswith("9 tensors of the base model are missing") for r in shallower)


def test_another_dtype_and_non_finite_weights_are_refused(tmp_path: Path) -> None:
    base = tiny_model_dir(tmp_path / "base")
    fp32 = tiny_model_dir(tmp_path / "fp32", dtype=torch.float32)
    (reason,) = check_full_model_dir(fp32, base)
    assert "stored in another dtype than the base model's" in reason and "F32" in reason
    broken = tiny_model_dir(tmp_path / "nan", seed=1)
    weights = load_file(broken / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][3, 3] = float("inf")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    (reason,) = check_full_model_dir(broken, base)
    assert reason == "1 tensors hold NaN or infinite values: model.layers.0.mlp.up_proj.weight"


def test_missing_files_and_truncated_weights_are_reported_not_raised(tmp_path: Path) -> None:
    base = tiny_model_dir(tmp_path / "base")
    bare = tiny_model_dir(tmp_path / "bare", seed=1)
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        (bare / name).unlink()
    reasons = check_full_model_dir(bare, base)
    assert [r.split(" (")[0].split(" is missing")[0] for r in reasons] == [
        "the tokenizer",
        "the chat template",
        "generation_config.json",
    ]
    (bare / "config.json").unlink()
    truncated = bare / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:100])
    reasons = check_full_model_dir(bare, base)
    assert any(r.startswith("config.json is missing") for r in reasons)
    assert any("model.safetensors is unreadable or truncated" in r for r in reasons)
