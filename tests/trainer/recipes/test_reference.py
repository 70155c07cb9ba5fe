"""DPO from an SFT adapter trains against the SFT policy, measured rather than labelled: the
reference log-probabilities TRL computes for a probe batch equal the SFT adapter's own (loaded alone
from its stored files) and differ from the bare base's, before the first step and again after a
resume from a checkpoint (whose trained adapter, not the SFT start, is the policy that goes on); the
manifest names the reference by the SFT adapter's content hash. A control drops TRL's frozen "ref"
copy (TRL's own fallback to the bare base) and expects a refusal.

Measured on the 2-core CPU in fp32: reference vs. SFT adapter 0.0 nats (bitwise-equal weights, same
kernels), reference vs. bare base 17.3 nats for the 2-step SFT adapter at learning rate 2e-3, so
SAME_POLICY_ATOL (0.05) and the "differs" bar (20x that, 1 nat) are far from both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.trainer.config import TrainerSettings
from services.trainer.recipes import dpo as dpo_recipe
from services.trainer.recipes.context import Stopped
from services.trainer.recipes.reference import (
    SAME_POLICY_ATOL,
    ReferenceMismatch,
    make_reference_callback,
)
from shared.registry.adapters import get_version
from shared.registry.db import open_registry
from tests.trainer.conftest import RecordingReporter, run_in_process, tiny_hyperparameters

# The SFT adapter must move the probe batch well clear of SAME_POLICY_ATOL, or "differs from the
# base" would prove nothing; a higher learning rate than the other tests' 2e-4 makes sure of it.
SFT = {
    "method": {
        "type": "supervised",
        "supervised": {"hyperparameters": tiny_hyperparameters(learning_rate=2e-3)},
    }
}


def dpo_spec(base_adapter: str, **hp: Any) -> dict[str, Any]:
    return {
        "method": {"type": "dpo", "dpo": {"hyperparameters": tiny_hyperparameters(**hp)}},
        "base_adapter": base_adapter,
    }


def checks(reporter: RecordingReporter) -> list[dict[str, Any]]:
    return [
        {"step": e["data"]["step"], **e["data"]["reference"]}
        for e in reporter.events
        if isinstance(e["data"], dict) and "reference" in e["data"]
    ]


def sft_adapter(
    settings: TrainerSettings, sft_file: Path, lora: dict[str, Any] | None = None
) -> tuple[str, str]:
    """A registered SFT adapter: its version id and content hash."""
    spec = {**SFT, "lora": lora} if lora else SFT
    sft, _ = run_in_process(settings, spec, sft_file, adapter_name="sft")
    registry = open_registry(settings)
    with registry.session() as s:
        sha = get_version(s, sft.version_id).sha256
    registry.dispose()
    return sft.version_id, sha


def policy_at_train_begin(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Snapshots of the trained ("default") adapter when the reference is checked, i.e. after a
    checkpoint has been loaded."""
    from peft import get_peft_model_state_dict

    make, snapshots = make_reference_callback, []

    def snapshotting(trainer: Any, *args: Any) -> Any:
        callback = make(trainer, *args)
        check = callback.on_train_begin

        def on_train_begin(*a: Any, **kw: Any) -> None:
            state = get_peft_model_state_dict(trainer.model, adapter_name="default")
            snapshots.append({k: v.detach().clone() for k, v in state.items()})
            check(*a, **kw)

        callback.on_train_begin = on_train_begin
        return callback

    monkeypatch.setattr(dpo_recipe, "make_reference_callback", snapshotting)
    return snapshots


@pytest.mark.slow
def test_reference_is_the_sft_adapter_also_after_a_resume(
    trainer_model_settings: TrainerSettings,
    sft_file: Path,
    dpo_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    from safetensors.torch import load_file

    version, sha = sft_adapter(trainer_model_settings, sft_file)
    policies = policy_at_train_begin(monkeypatch)
    # No warm-up: step 1 must change the policy, or its checkpoint would equal the start.
    spec = dpo_spec(version, save_steps=1, warmup_ratio=0.0)
    work = tmp_path / "dpo-work"

    # A first attempt stops after step 1's checkpoint, like a worker that died there.
    first = RecordingReporter(stop_after_metrics=1)
    with pytest.raises(Stopped):
        run_in_process(
            trainer_model_settings, spec, dpo_file, adapter_name="dpo", reporter=first, work=work
        )
    assert (work / "checkpoint-1" / "adapter_model.safetensors").is_file()
    # The second resumes from it and checks the reference again, after the checkpoint is loaded.
    result, second = run_in_process(
        trainer_model_settings, spec, dpo_file, adapter_name="dpo", work=work
    )
    assert any(e["message"] == "resuming from checkpoint-1" for e in second.events)

    (at_start,), (at_resume,) = checks(first), checks(second)
    assert at_start["step"] == 0 and at_resume["step"] == 1
    for found in (at_start, at_resume):
        assert found["kind"] == "sft_adapter" and found["adapter_sha256"] == sha
        assert found["probe_max_abs_diff_vs_sft"] <= SAME_POLICY_ATOL
        assert found["probe_max_abs_diff_vs_base"] > 20 * SAME_POLICY_ATOL
    reference = result.manifest["config"]["decisions"]["reference"]
    assert reference == {k: v for k, v in at_resume.items() if k != "step"}
    assert result.manifest["base_adapter"] == {"id": version, "sha256": sha}

    # The resumed policy is checkpoint-1's, not the SFT start again: transformers loads only the
    # adapters in checkpoint subfolders (here "ref/") when there are any, so the recipe loads it.
    saved = load_file(work / "checkpoint-1" / "adapter_model.safetensors")
    start, resumed = policies
    assert saved.keys() == resumed.keys()
    assert all(torch.equal(resumed[k], saved[k]) for k in saved)
    assert not all(torch.equal(start[k], saved[k]) for k in saved)


@pytest.mark.slow
def test_a_reference_on_the_bare_base_is_refused(
    trainer_model_settings: TrainerSettings,
    sft_file: Path,
    dpo_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version, _ = sft_adapter(trainer_model_settings, sft_file)
    make = make_reference_callback

    def without_ref_copy(trainer: Any, *args: Any) -> Any:
        # What TRL does itself for PEFT < 0.20 with target_parameters: no "ref" adapter, so its
        # reference is the model with adapters off, the bare base.
        trainer.model.delete_adapter("ref")
        return make(trainer, *args)

    monkeypatch.setattr(dpo_recipe, "make_reference_callback", without_ref_copy)
    reporter = RecordingReporter()
    with pytest.raises(ReferenceMismatch) as info:
        run_in_process(
            trainer_model_settings,
            dpo_spec(version),
            dpo_file,
            adapter_name="dpo",
            reporter=reporter,
        )
    assert "not the starting SFT adapter" in info.value.message
    (found,) = checks(reporter)
    assert found["probe_max_abs_diff_vs_base"] <= SAME_POLICY_ATOL
    assert found["probe_max_abs_diff_vs_sft"] > 20 * SAME_POLICY_ATOL
    assert not any(e["type"] == "metrics" for e in reporter.events)


# Heavy: a QLoRA SFT run and a QLoRA DPO run (3 min on 2 cores); the LoRA tests above keep the
# check in `make test`, this one runs in `make test-all`.
@pytest.mark.slow
@pytest.mark.heavy
def test_qlora_reference_is_the_sft_adapter(
    trainer_model_settings: TrainerSettings, sft_file: Path, dpo_file: Path
) -> None:
    """On an NF4 base (bf16 compute) the probe once found 0.614 nats between the reference and the
    SFT adapter: the freshly loaded probe adapter's dropout was on. Same weights, same policy."""
    lora = {"quantization": "nf4", "r": 8}
    version, sha = sft_adapter(trainer_model_settings, sft_file, lora)
    result, _ = run_in_process(
        trainer_model_settings, {**dpo_spec(version), "lora": lora}, dpo_file, adapter_name="dpo"
    )
    reference = result.manifest["config"]["decisions"]["reference"]
    assert reference["kind"] == "sft_adapter" and reference["adapter_sha256"] == sha
    assert reference["probe_max_abs_diff_vs_sft"] <= SAME_POLICY_ATOL
    assert reference["probe_max_abs_diff_vs_base"] > 20 * SAME_POLICY_ATOL
