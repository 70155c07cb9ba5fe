"""`services.trainer.recipes.saving`: the saved adapter folder is the same bytes for the same seed,
a stopped run keeps nothing, and the folder loads in vLLM; resuming finds the newest complete
checkpoint and restores the trained adapter; the folder holds the adapter files only, with a
normalised config, and is refused when the server could not load it; the manifest records the
lineage and metrics and is registered with the folder."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from services.trainer.config import TrainerSettings
from services.trainer.recipes import saving
from services.trainer.recipes.context import Stopped
from services.trainer.recipes.saving import (
    ADAPTER_FILES,
    MANIFEST,
    final_metrics,
    finish,
    latest_checkpoint,
    library_versions,
    restore_trained_adapter,
    save_adapter,
)
from shared.artifacts import file_sha256
from shared.basemodel import ResolvedBaseModel
from shared.datasets import PreparedData
from shared.errors import SystemFailure
from shared.registry.adapters import list_versions
from shared.registry.db import open_registry
from tests.trainer.conftest import RecordingReporter, run_in_process
from tests.trainer.recipes.specs import BASE, make_ctx, sft_spec


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_bytes(
    trainer_model_settings: TrainerSettings, sft_file: Path, tmp_path: Path
) -> None:
    def adapter_bytes(seed: int, name: str) -> tuple[bytes, bytes]:
        result, _ = run_in_process(
            trainer_model_settings,
            {**sft_spec(), "seed": seed},
            sft_file,
            adapter_name=name,
            work=tmp_path / name,
        )
        folder = result.adapter_dir
        return (folder / "adapter_model.safetensors").read_bytes(), (
            folder / "adapter_config.json"
        ).read_bytes()

    first, second, other = adapter_bytes(3, "a"), adapter_bytes(3, "b"), adapter_bytes(4, "c")
    assert first == second
    assert first[0] != other[0]


@pytest.mark.slow
def test_stop_request_keeps_nothing(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    reporter = RecordingReporter(stop_after_metrics=1)
    with pytest.raises(Stopped):
        run_in_process(
            trainer_model_settings,
            sft_spec(max_steps=6),
            sft_file,
            reporter=reporter,
            adapter_name="stopped",
        )
    steps = [e["data"]["step"] for e in reporter.events if e["type"] == "metrics"]
    assert max(steps) < 6
    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        assert list_versions(s, "stopped") == []
    registry.dispose()


@pytest.mark.slow
def test_trained_adapter_loads_in_vllm(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    import subprocess
    import sys

    pytest.importorskip("vllm")
    result, _ = run_in_process(trainer_model_settings, sft_spec(), sft_file, adapter_name="vllm")
    script = Path(__file__).with_name("vllm_adapter_check.py")
    base = trainer_model_settings.models_dir / BASE
    proc = subprocess.run(
        [sys.executable, str(script), str(base), str(result.adapter_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert "VLLM_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


# Unit tests of the steps around a trainer: fakes in place of the model and the trainer.


def complete_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def test_the_newest_complete_checkpoint_is_resumed(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    complete_checkpoint(tmp_path / "checkpoint-2")
    newest = complete_checkpoint(tmp_path / "checkpoint-10")  # by step, not by name
    half = tmp_path / "checkpoint-12"  # a worker died while writing it
    half.mkdir()
    (half / "trainer_state.json").write_text("{}")
    complete_checkpoint(tmp_path / "checkpoint-final")  # not a step
    assert latest_checkpoint(tmp_path) == str(newest)


class TinyLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(4, 4, bias=False)


def tiny_peft() -> Any:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(TinyLinear(), LoraConfig(r=2, target_modules=["up"]))


def test_a_checkpoint_with_one_adapter_is_left_to_transformers(tmp_path: Path) -> None:
    folder = complete_checkpoint(tmp_path / "checkpoint-1")
    model = tiny_peft()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    restore_trained_adapter(model, str(folder))  # the empty file is not even read
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_with_a_reference_copy_restores_the_trained_adapter(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "checkpoint-3"
    (folder / "ref").mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(folder / "ref" / "adapter_model.safetensors"))
    trained = torch.full((4, 2), 0.5)
    save_file({"base_model.model.up.lora_B.weight": trained}, str(folder / ADAPTER_FILES[1]))
    model = tiny_peft()
    restore_trained_adapter(model, str(folder))
    assert torch.equal(model.base_model.model.up.lora_B["default"].weight, trained)
    # Weights of another model are refused, not silently skipped.
    save_file({"base_model.model.down.lora_B.weight": trained}, str(folder / ADAPTER_FILES[1]))
    with pytest.raises(SystemFailure) as info:
        restore_trained_adapter(tiny_peft(), str(folder))
    assert info.value.code == "checkpoint_mismatch"


def tiny_base(tmp_path: Path) -> ResolvedBaseModel:
    from safetensors.torch import save_file

    folder = tmp_path / "base"
    folder.mkdir()
    layer = "model.layers.0.self_attn"
    save_file(
        {f"{layer}.q_proj.weight": torch.zeros(8, 4), f"{layer}.k_proj.weight": torch.zeros(8, 4)},
        str(folder / "model.safetensors"),
    )
    return ResolvedBaseModel("tiny-base", folder, "0" * 64, "test")


class FakePeftModel:
    """Writes what peft's save_pretrained writes: the adapter files and some extras."""

    def __init__(self, r: int = 2, rank_of_tensors: int = 2) -> None:
        self.r, self.rank = r, rank_of_tensors
        self.calls: list[dict[str, Any]] = []

    def save_pretrained(self, path: str, **kwargs: Any) -> None:
        from safetensors.torch import save_file

        self.calls.append(kwargs)
        folder = Path(path)
        folder.mkdir(parents=True)
        config = {
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": 4,
            "target_modules": ["q_proj", "k_proj"],
            "base_model_name_or_path": "/tmp/somewhere/base",
            "revision": "main",
        }
        (folder / "adapter_config.json").write_text(json.dumps(config))
        prefix = "base_model.model.model.layers.0.self_attn"
        tensors = {}
        for module in ("q_proj", "k_proj"):
            tensors[f"{prefix}.{module}.lora_A.weight"] = torch.ones(self.rank, 4)
            tensors[f"{prefix}.{module}.lora_B.weight"] = torch.ones(8, self.rank)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "README.md").write_text("model card")
        (folder / "tokenizer.json").write_text("{}")
        (folder / "ref").mkdir()


def test_the_saved_folder_holds_the_adapter_files_only_with_a_normalised_config(
    tmp_path: Path,
) -> None:
    ctx = make_ctx(tmp_path)
    model = FakePeftModel()
    stale = ctx.output_dir / "final"
    stale.mkdir()
    (stale / "old.bin").write_text("from a dead worker")
    final = save_adapter(SimpleNamespace(model=model), ctx, tiny_base(tmp_path))
    assert final == stale and sorted(p.name for p in final.iterdir()) == list(ADAPTER_FILES)
    assert model.calls == [{"selected_adapters": ["default"], "save_embedding_layers": False}]
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-base"  # the registry name, not a path
    assert config["revision"] is None
    assert config["target_modules"] == ["k_proj", "q_proj"]  # sorted: equal bytes each run
    assert not (ctx.output_dir / "final.tmp").exists()


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (FakePeftModel(r=2, rank_of_tensors=3), "adapter_config says r=2"),
        (FakePeftModel(r=32, rank_of_tensors=32), "max LoRA rank 16"),
    ],
)
def test_an_unservable_folder_is_refused_and_not_kept(
    tmp_path: Path, model: FakePeftModel, reason: str
) -> None:
    ctx = make_ctx(tmp_path)
    with pytest.raises(SystemFailure) as info:
        save_adapter(SimpleNamespace(model=model), ctx, tiny_base(tmp_path))
    assert info.value.code == "unservable_adapter"
    assert any(reason in d for d in info.value.details), info.value.details
    assert not (ctx.output_dir / "final").exists()


def test_final_metrics_and_the_loss_curve_come_from_the_log_history() -> None:
    history: list[dict[str, Any]] = [
        {"step": 1, "loss": 2.0, "mean_token_accuracy": 0.4, "rewards/margins": 0.1},
        {"step": 2, "eval_loss": 1.9, "eval_mean_token_accuracy": 0.5},
        {"step": 2, "loss": 1.23456789, "mean_token_accuracy": 0.6},
        {"step": 2, "train_runtime": 3.0},
    ]
    metrics, curve = final_metrics(history)
    assert curve == [[1, 2.0], [2, 1.234568]]
    assert metrics == {
        "train_loss": 1.234568,
        "valid_loss": 1.9,
        "valid_mean_token_accuracy": 0.5,
        "mean_token_accuracy": 0.6,  # the latest value
        "rewards_margins": 0.1,  # from the last log that has it
    }
    assert final_metrics([]) == ({}, [])


def test_library_versions_name_a_missing_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saving, "LIBRARIES", ("torch", "no-such-library-here"))
    versions = library_versions()
    assert set(versions) == {"python", "torch", "no-such-library-here"}
    assert versions["no-such-library-here"] == "missing"
    assert versions["torch"] != "missing" and versions["python"] == platform.python_version()


def trained(history: list[dict[str, Any]], stop_reason: str | None = None) -> Any:
    return SimpleNamespace(
        trainer=SimpleNamespace(state=SimpleNamespace(log_history=history)),
        callback=SimpleNamespace(stop_reason=stop_reason),
    )


def model_setup(tmp_path: Path) -> Any:
    renderer = SimpleNamespace(template_sha256="t" * 64, stop_tokens=["<|im_end|>"])
    return SimpleNamespace(base=tiny_base(tmp_path), renderer=renderer, precision="fp32")


def test_a_stopped_run_saves_and_registers_nothing(tmp_path: Path) -> None:
    registered: list[Any] = []
    saved: list[Any] = []
    ctx = make_ctx(tmp_path, registered=registered)

    def save(*args: Any) -> Path:
        saved.append(args)
        return tmp_path

    with pytest.raises(Stopped) as info:
        finish(
            ctx,
            trained([{"step": 1, "loss": 1.0}], stop_reason="claim lost"),
            model_setup(tmp_path),
            data=PreparedData("sft", [], []),
            hp=ctx.spec.resolved(),
            decisions={},
            trained_tokens=10,
            save=save,
        )
    assert info.value.reason == "claim lost"
    assert saved == [] and registered == []


def test_finish_writes_the_manifest_and_registers_the_folder(
    tmp_path: Path, sft_file: Path
) -> None:
    registered: list[Any] = []
    reporter = RecordingReporter()
    ctx = make_ctx(tmp_path, train=sft_file, registered=registered, reporter=reporter)
    setup = model_setup(tmp_path)
    folder = tmp_path / "saved"

    def save(trainer: Any, context: Any, base: ResolvedBaseModel) -> Path:
        assert context is ctx and base is setup.base
        folder.mkdir()
        return folder

    history = [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.25}]
    result = finish(
        ctx,
        trained(history),
        setup,
        data=PreparedData("sft", [], [], report={"train": {"examples": 9}}),
        hp=ctx.spec.resolved(),
        decisions={"precision": "fp32"},
        trained_tokens=1234,
        save=save,
        extra={"score_head": "yes"},
        extra_metrics={"pair_accuracy": 0.75},
    )
    manifest = json.loads((folder / MANIFEST).read_text())
    assert result.manifest == manifest and result.adapter_dir == folder
    assert result.version_id == "adapter@v1" and registered == [(folder, manifest, setup.base)]
    assert result.trained_tokens == 1234 and manifest["trained_tokens"] == 1234
    assert manifest["metrics"] == {"train_loss": 1.25, "pair_accuracy": 0.75}
    assert result.metrics == manifest["metrics"]
    assert manifest["score_head"] == "yes" and manifest["loss_curve"] == [[1, 1.5], [2, 1.25]]
    assert manifest["adapter_name"] == "adapter" and manifest["method"] == "supervised"
    assert manifest["base_model"] == {"name": "tiny-base", "weights_sha256": "0" * 64}
    assert manifest["datasets"] == {
        "training_file": {"id": None, "name": "sft.jsonl", "sha256": file_sha256(sft_file)},
        "validation_file": None,
    }
    assert manifest["config"]["decisions"] == {"precision": "fp32"}
    assert manifest["config"]["hyperparameters"]["max_steps"] == 2
    assert "training_file" not in manifest["config"]["spec"]
    assert manifest["chat_template_sha256"] == "t" * 64
    assert manifest["stop_tokens"] == ["<|im_end|>"]
    assert manifest["validation_report"] == {"train": {"examples": 9}}
    assert reporter.events[-1]["message"] == "adapter saved; registering"
    # No timestamps: the same run writes the same bytes.
    first = (folder / MANIFEST).read_bytes()
    (folder / MANIFEST).unlink()
    folder.rmdir()
    finish(
        ctx,
        trained(history),
        setup,
        data=PreparedData("sft", [], [], report={"train": {"examples": 9}}),
        hp=ctx.spec.resolved(),
        decisions={"precision": "fp32"},
        trained_tokens=1234,
        save=save,
        extra={"score_head": "yes"},
        extra_metrics={"pair_accuracy": 0.75},
    )
    assert (folder / MANIFEST).read_bytes() == first
