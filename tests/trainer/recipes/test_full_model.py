"""`services.trainer.recipes.full_model`: full fine-tuning (``adapter: none``) through the SFT recipe.

Fast tests save a tiny random Llama the way a finished job saves its model (base dtype, base
tokenizer files, the servability check). The slow one trains the embedded model for two steps,
resuming from the first step's checkpoint, and checks what was registered (kind full, rank 0, the
lineage, every matrix moved, the loss on the training rows went down).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.trainer.config import TrainerSettings
from services.trainer.recipes.full_model import (
    BASE_FILES,
    save_full_model,
    stored_dtype,
    trains_full_model,
)
from services.trainer.recipes.saving import MANIFEST, latest_checkpoint
from services.trainer.schemas import JobSpec
from shared.basemodel import ResolvedBaseModel
from shared.errors import SystemFailure
from shared.registry.adapters import list_versions
from shared.registry.db import open_registry
from shared.registry.versions import is_full_model
from shared.servability import check_full_model_dir
from tests.trainer.conftest import RecordingReporter, run_in_process
from tests.trainer.recipes.specs import BASE, make_ctx, sft_spec

TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "tie_word_embeddings": True,
}


def full_spec(**hp: Any) -> dict[str, Any]:
    return {**sft_spec(**hp), "adapter": "none"}


def tiny_base(folder: Path) -> tuple[ResolvedBaseModel, Any]:
    """A bf16 tiny Llama folder with tokenizer stand-ins, and the fp32 model a job would train."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))
    model.to(torch.bfloat16).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).write_text("{}" if name.endswith(".json") else "{{ messages }}")
    trained = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return ResolvedBaseModel("tiny", folder, "0" * 64, "local:tiny", "llama"), trained


def fake_trainer(model: Any) -> Any:
    return SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))


def test_only_adapter_none_trains_the_full_model() -> None:
    assert trains_full_model(JobSpec.model_validate({"training_file": "f", "adapter": "none"}))
    assert not trains_full_model(JobSpec.model_validate({"training_file": "f"}))


def test_the_saved_model_is_the_trained_one_in_the_base_dtype_with_the_base_files(
    tmp_path: Path,
) -> None:
    import torch
    from safetensors.torch import load_file

    base, model = tiny_base(tmp_path / "base")
    assert stored_dtype(base.path) == torch.bfloat16
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.5)  # far above bf16's resolution: every weight changes
    ctx = make_ctx(tmp_path, full_spec())
    folder = save_full_model(fake_trainer(model), ctx, base)
    assert folder == ctx.output_dir / "final" and not (ctx.output_dir / "final.tmp").exists()
    assert check_full_model_dir(folder, base.path) == []
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert {n for n in BASE_FILES if (base.path / n).is_file()} <= names
    saved, original = (
        load_file(folder / "model.safetensors"),
        load_file(base.path / "model.safetensors"),
    )
    assert saved.keys() == original.keys()
    assert all(t.dtype == torch.bfloat16 for t in saved.values())
    assert all(not torch.equal(saved[k], original[k]) for k in saved)
    assert json.loads((folder / "config.json").read_text())["use_cache"] is True


def test_a_model_with_non_finite_weights_is_not_kept(tmp_path: Path) -> None:
    import torch

    base, model = tiny_base(tmp_path / "base")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    ctx = make_ctx(tmp_path, full_spec())
    with pytest.raises(SystemFailure) as info:
        save_full_model(fake_trainer(model), ctx, base)
    assert info.value.code == "unservable_model"
    assert "model.layers.1.mlp.down_proj.weight" in info.value.message
    assert not (ctx.output_dir / "final").exists()


def test_a_full_checkpoint_is_resumed_from(tmp_path: Path) -> None:
    for step, weights in ((1, "model.safetensors"), (2, "model.safetensors.index.json")):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        (folder / weights).write_text("x")
    (tmp_path / "checkpoint-3").mkdir()  # half-written: no weights yet
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


# -- the recipe on the embedded model ---------------------------------------------------------
def training_loss(model_dir: Path, rows: Path) -> float:
    """Mean loss over the trained (assistant) tokens of ``rows``, as the recipe renders them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.datasets import ChatRenderer, load_examples, stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    renderer = ChatRenderer(tokenizer, stop_token_ids(tokenizer))
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    total, count = 0.0, 0
    with torch.no_grad():
        for example in load_examples(rows, source=rows.name).examples:
            rendered = renderer.render_sft(example)
            ids = torch.tensor([rendered.input_ids])
            labels = torch.tensor([rendered.labels])
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    return total / count


def changed_matrices(folder: Path, base_dir: Path) -> dict[str, bool]:
    """Matrix name -> whether it differs from the base's."""
    import torch
    from safetensors.torch import load_file

    tuned, base = load_file(folder / "model.safetensors"), load_file(base_dir / "model.safetensors")
    assert tuned.keys() == base.keys()
    return {k: not torch.equal(tuned[k], base[k]) for k in base if base[k].dim() == 2}


@pytest.mark.slow
def test_full_fine_tuning_trains_every_weight_registers_a_full_version_and_resumes(
    trainer_model_settings: TrainerSettings, sft_file: Path, tmp_path: Path
) -> None:
    from shared.memory import ModelShape

    base_dir = trainer_model_settings.models_dir / BASE
    # 1e-4 rather than the full default (2e-5) so two steps move the loss measurably, and no
    # warmup (with two steps it would leave the first at a rate of zero).
    hp: dict[str, Any] = {"learning_rate": 1e-4, "warmup_ratio": 0, "save_steps": 1}
    work = tmp_path / "work"
    first, _ = run_in_process(
        trainer_model_settings,
        full_spec(**hp, max_steps=1, precision="fp32"),
        sft_file,
        adapter_name="full",
        work=work,
    )
    assert first.version_id == "full@v1" and first.manifest["kind"] == "full"
    # The same job given a second step goes on from the first one's full checkpoint (model and
    # optimizer state), as a job whose worker died after checkpoint-1 does.
    assert latest_checkpoint(work) == str(work / "checkpoint-1")
    result, reporter = run_in_process(
        trainer_model_settings,
        full_spec(**hp, max_steps=2, precision="fp32"),
        sft_file,
        adapter_name="full",
        work=work,
        reporter=RecordingReporter(),
    )
    assert any(e["message"] == "resuming from checkpoint-1" for e in reporter.events)
    started = [e["data"] for e in reporter.events if e["type"] == "started"]
    assert started == [{"step": 1, "total_steps": 2}]

    folder = result.adapter_dir
    assert check_full_model_dir(folder, base_dir) == []
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest == result.manifest and manifest["kind"] == "full"
    assert manifest["base_model"]["name"] == BASE
    assert len(manifest["base_model"]["weights_sha256"]) == 64
    assert manifest["datasets"]["training_file"]["sha256"]
    spec = manifest["config"]["spec"]
    assert spec["adapter"] == "none" and "lora" not in spec
    assert manifest["config"]["hyperparameters"]["learning_rate"] == 1e-4
    assert {"torch", "transformers", "trl"} <= set(manifest["libraries"])
    assert len(manifest["chat_template_sha256"]) == 64
    assert [step for step, _ in manifest["loss_curve"]] == [1, 2]
    assert "train_loss" in manifest["metrics"] and "valid_loss" in manifest["metrics"]
    # Every weight trained: the trainer's own count is the base's parameter count.
    decisions = manifest["config"]["decisions"]
    assert decisions["trainable_params"] == ModelShape.from_folder(base_dir).params
    assert any(e["message"].startswith("full fine-tuning: all ") for e in reporter.events)

    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        versions = list_versions(s, "full")
        assert (
            [v.id for v in versions]
            == ["full@v1", "full@v2"]
            == [first.version_id, result.version_id]
        )
        assert all(v.rank == 0 and is_full_model(v) and v.base_model == BASE for v in versions)
    registry.dispose()

    # Not one layer but the whole model moved: every matrix (the embeddings, each attention and
    # MLP projection of all 30 blocks). Norm weights (~1.0) move by less than bf16's resolution
    # there in two steps, so they are not counted.
    matrices = changed_matrices(folder, base_dir)
    assert len(matrices) == 30 * 7 + 1
    assert all(matrices.values()), [k for k, v in matrices.items() if not v]
    before, after = training_loss(base_dir, sft_file), training_loss(folder, sft_file)
    assert after < 0.9 * before, (before, after)
