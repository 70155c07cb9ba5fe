"""DPO's reference policy, checked rather than assumed.

TRL picks the reference itself: with a PEFT model and no ``ref_model`` it uses a frozen "ref" copy
of the starting adapter if it made one, else the base with adapters off, and its own code falls back
to the bare base in some set-ups. So before the first step (and again after a resume, when the
checkpoint has been loaded) we take the reference log-probabilities of a fixed probe batch through
TRL's own ``compute_ref_log_probs``, compare them with the same batch under the starting SFT adapter
loaded alone from its stored files and under the bare base, and refuse to train if the reference is
not what the recipe promises. The manifest records the result and the SFT adapter's content hash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.trainer.recipes.context import Reporter
from shared.artifacts import tree_files, tree_sha256
from shared.errors import SystemFailure

PROBE_PAIRS = 4  # the first pairs of the training set: 8 sequences, three forward passes
PROBE_ADAPTER = "loraplex_probe_sft"
# Largest |difference| of summed sequence log-probs (nats) still counted as "the same policy".
# The "ref" copy and the probe adapter hold bitwise-equal weights and run the same kernels, so on
# CPU they agree exactly (0.0); the slack is for bf16 or non-deterministic GPU kernels. A 2-step SFT
# adapter on the test model already moves the probe by far more (see tests/trainer/test_dpo_reference).
SAME_POLICY_ATOL = 0.05


class ReferenceMismatch(SystemFailure):
    code = "dpo_reference_mismatch"


def adapter_sha256(adapter_dir: Path) -> str:
    """The content hash the artifact store keys the adapter folder by (index file excluded)."""
    return tree_sha256(tree_files(adapter_dir))


def _probe_batch(trainer: Any) -> dict[str, Any]:
    dataset = trainer.train_dataset
    rows = [dataset[i] for i in range(min(PROBE_PAIRS, len(dataset)))]
    device = trainer.accelerator.device
    return {k: v.to(device) for k, v in trainer.data_collator(rows).items()}


def _sequence_logps(trainer: Any, batch: dict[str, Any]) -> Any:
    """Summed completion log-probs of the model as its adapters are set now, computed like TRL's
    ``compute_ref_log_probs`` (same fused head, masks and sum) but without its adapter switch."""
    import torch

    inputs = {k: v for k, v in batch.items() if k not in ("completion_mask",)}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad(), trainer.accelerator.autocast():
        out = trainer.model(**inputs, use_cache=False, labels=labels, fused_lm_head=True)
    width = batch["completion_mask"].size(1) - 1
    return out.log_probs[:, -width:].sum(dim=1).float().cpu()


def probe_reference(trainer: Any, sft_adapter_dir: Path | None) -> dict[str, Any]:
    """Reference log-probs of the probe batch by TRL's own path vs. the SFT adapter and the base."""
    import torch
    from trl.trainer.utils import use_adapter

    model = trainer.accelerator.unwrap_model(trainer.model)
    batch = _probe_batch(trainer)
    if sft_adapter_dir is not None:
        model.load_adapter(str(sft_adapter_dir), PROBE_ADAPTER, is_trainable=False)
    training = model.training
    # Eval mode, set after the load: a newly added adapter's dropout starts in training mode (on a
    # QLoRA base that alone moved the probe by 0.6 nats), and TRL has switched off the ref copy's.
    model.eval()
    try:
        ref = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch)).float().cpu()
        with use_adapter(model, None):
            base = _sequence_logps(trainer, batch)
        sft = None
        if sft_adapter_dir is not None:
            with use_adapter(model, PROBE_ADAPTER):
                sft = _sequence_logps(trainer, batch)
    finally:
        if sft_adapter_dir is not None:
            model.delete_adapter(PROBE_ADAPTER)
        model.train(training)

    def gap(other: Any) -> float | None:
        return None if other is None else round(float((ref - other).abs().max()), 4)

    return {
        "kind": "sft_adapter" if sft_adapter_dir is not None else "base",
        "adapter_sha256": adapter_sha256(sft_adapter_dir) if sft_adapter_dir else None,
        "probe_max_abs_diff_vs_sft": gap(sft),
        "probe_max_abs_diff_vs_base": gap(base),
    }


def check_reference(found: dict[str, Any]) -> None:
    """Refuse unless the reference is the policy DPO promises to move away from."""
    if found["kind"] == "sft_adapter":
        diff, what = found["probe_max_abs_diff_vs_sft"], "the starting SFT adapter"
    else:
        diff, what = found["probe_max_abs_diff_vs_base"], "the bare base model"
    if diff > SAME_POLICY_ATOL:
        base_gap = found["probe_max_abs_diff_vs_base"]
        raise ReferenceMismatch(
            f"DPO's reference policy is not {what}: its log-probabilities on the probe batch differ "
            f"by up to {diff} nats (tolerance {SAME_POLICY_ATOL}; {base_gap} from the bare base); "
            "refusing to train against the wrong reference",
            details=[json.dumps(found, sort_keys=True)],
        )


def make_reference_callback(trainer: Any, sft_adapter_dir: Path | None, reporter: Reporter) -> Any:
    """Probes and checks the reference at ``on_train_begin``, which comes after a checkpoint load,
    so a resumed job is checked too. ``found`` holds the latest result for the manifest."""
    from transformers import TrainerCallback

    class ReferenceCheck(TrainerCallback):
        found: dict[str, Any] | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            found = probe_reference(trainer, sft_adapter_dir)
            reporter.event(
                f"DPO reference checked at step {state.global_step}: {found['kind']}",
                data={"reference": found, "step": state.global_step},
            )
            check_reference(found)
            self.found = found

    return ReferenceCheck()
