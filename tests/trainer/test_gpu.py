"""The curriculum's core claim on a real GPU: QLoRA (NF4 base, double quantisation) and LoRA (bf16
base) train through our own recipe (the code ``loraplex train run`` runs), the loss goes down, the
saved peft folder loads back on the base and lowers held-out loss, and the memory planner's
ordering and upper bound hold against measured peak CUDA memory.

Skipped without CUDA (``tests/conftest.py`` skips every ``gpu`` test). The numbers each run
measured are written as JSON to ``$LORAPLEX_GPU_REPORT`` when that is set. Re-run on a GPU with::

    python -m pytest tests/trainer/test_gpu.py -q -m gpu
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.trainer.config import TrainerSettings
from shared.basemodel import ResolvedBaseModel
from tests.trainer.conftest import RecordingReporter, run_in_process

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SFT_DATA = REPO / "examples" / "extraction" / "sft_train.jsonl"
DPO_DATA = REPO / "examples" / "extraction" / "dpo_train.jsonl"
HELD_OUT = REPO / "examples" / "extraction" / "test.jsonl"
STEPS = 24
BATCH = 8
GIB = 1024**3


class TimedReporter(RecordingReporter):
    """Records events with their time and the CUDA memory allocated when each was sent."""

    def event(
        self, message: str, *, level: str = "info", type: str = "message", data: Any = None
    ) -> None:
        import torch

        self.events.append(
            {
                "message": message,
                "level": level,
                "type": type,
                "data": data,
                "time": time.monotonic(),
                "allocated": torch.cuda.memory_allocated(),
            }
        )

    def step_metrics(self) -> list[dict[str, Any]]:
        return [
            {**e["data"], "time": e["time"]}
            for e in self.events
            if e["type"] == "metrics" and "train_loss" in (e["data"] or {})
        ]


@dataclass
class GpuRun:
    method: str
    version_id: str
    adapter_dir: str
    losses: list[float]
    peak_allocated: int  # bytes above what was allocated before the run started
    peak_reserved: int
    allocated_at_train_start: int  # base weights + adapter, before any step
    plan_gib: dict[str, Any]
    tokens_per_second: float  # median over logged steps after the first
    steps_per_second: float
    decisions: dict[str, Any] = field(default_factory=dict)


def _train(settings: TrainerSettings, spec: dict[str, Any], data: Path, name: str) -> GpuRun:
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    baseline_reserved = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    reporter = TimedReporter()
    result, _ = run_in_process(
        settings,
        spec,
        data,
        adapter_name=name,
        reporter=reporter,
        work=settings.data_dir / "work" / name,
    )
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    peak_reserved = torch.cuda.max_memory_reserved() - baseline_reserved
    steps = reporter.step_metrics()
    started = next(e for e in reporter.events if e["message"].startswith("training started"))
    rates = [s["tokens_per_second"] for s in steps[1:] if s.get("tokens_per_second")]
    span = steps[-1]["time"] - steps[0]["time"] if len(steps) > 1 else 0.0
    decisions = result.manifest["config"]["decisions"]
    run = GpuRun(
        method=name,
        version_id=result.version_id,
        adapter_dir=str(result.adapter_dir),
        losses=[float(s["train_loss"]) for s in steps],
        peak_allocated=peak,
        peak_reserved=peak_reserved,
        allocated_at_train_start=started["allocated"] - baseline,
        plan_gib=decisions["memory_plan_gib"],
        tokens_per_second=statistics.median(rates) if rates else 0.0,
        steps_per_second=(len(steps) - 1) / span if span > 0 else 0.0,
        decisions=decisions,
    )
    _report(run)
    del result
    gc.collect()
    torch.cuda.empty_cache()
    return run


def _report(run: GpuRun) -> None:
    """Append the run's figures to ``$LORAPLEX_GPU_REPORT`` (JSON lines) when it is set."""
    path = os.environ.get("LORAPLEX_GPU_REPORT")
    if path:
        with Path(path).open("a") as fh:
            fh.write(json.dumps(asdict(run)) + "\n")


def sft_spec(quantization: str) -> dict[str, Any]:
    return {
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "max_steps": STEPS,
                    "batch_size": BATCH,
                    "learning_rate": 2e-4,
                    "max_length": 512,
                    "logging_steps": 1,
                    "save_steps": STEPS,
                }
            },
        },
        "lora": {
            "r": 16,
            "lora_alpha": 32,
            "target_modules": "all-linear",
            "quantization": quantization,
        },
        # No validation split: evaluation passes would blur the training-memory comparison.
        "data": {"validation_fraction": 0},
    }


@pytest.fixture(scope="module")
def gpu_settings(
    tmp_path_factory: pytest.TempPathFactory, base_model: ResolvedBaseModel
) -> TrainerSettings:
    """A data dir holding the prepared embedded model (linked), a registry of its own."""
    data_dir = tmp_path_factory.mktemp("gpu-data")
    target = data_dir / "models" / base_model.path.name
    target.mkdir(parents=True)
    for item in base_model.path.iterdir():
        if item.is_file():
            os.link(item, target / item.name)
    return TrainerSettings(data_dir=data_dir)


@pytest.fixture(scope="module")
def qlora_run(gpu_settings: TrainerSettings) -> GpuRun:
    return _train(gpu_settings, sft_spec("nf4"), SFT_DATA, "gpu-qlora")


@pytest.fixture(scope="module")
def lora_run(gpu_settings: TrainerSettings) -> GpuRun:
    return _train(gpu_settings, sft_spec("none"), SFT_DATA, "gpu-lora")


def _held_out_batch(tokenizer: Any, device: str, n: int = 16) -> tuple[Any, Any, Any]:
    """Held-out prompts with the expected JSON answer; loss only on the answer tokens."""
    import torch

    rows = [json.loads(line) for line in HELD_OUT.read_text().splitlines()[:n]]
    ids, labels = [], []
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            row["messages"], tokenize=False, add_generation_prompt=True
        )
        answer = json.dumps(row["expected"]) + "<|im_end|>"
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    label_ids = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    return input_ids.to(device), mask.to(device), label_ids.to(device)


def _check_adapter_loads(
    run: GpuRun, base_model: ResolvedBaseModel, quantized: bool, device: str = "cuda"
) -> None:
    """Load the saved folder with plain peft on the base it was trained on (NF4 for QLoRA): the
    weights are the saved ones, on the GPU, and held-out answer loss is lower than the base's."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    folder = Path(run.adapter_dir)
    quantization = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        if quantized
        else None
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_model.path,
        dtype=torch.bfloat16,
        quantization_config=quantization,
        device_map={"": device},
    )
    if quantized:
        assert getattr(model, "is_loaded_in_4bit", False), "base did not load in 4-bit"
    tokenizer = AutoTokenizer.from_pretrained(base_model.path)
    input_ids, mask, labels = _held_out_batch(tokenizer, device)
    model.eval()
    with torch.no_grad():
        base_loss = float(model(input_ids=input_ids, attention_mask=mask, labels=labels).loss)
        tuned = PeftModel.from_pretrained(model, folder)
        tuned.eval()
        tuned_loss = float(tuned(input_ids=input_ids, attention_mask=mask, labels=labels).loss)

    saved = load_file(str(folder / "adapter_model.safetensors"))
    loaded = {k: v for k, v in tuned.state_dict().items() if "lora_" in k and k.endswith(".weight")}
    assert len(saved) == len(loaded) > 0
    for key, value in saved.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "") == key]
        assert len(match) == 1, f"{key} not found in the loaded model"
        assert match[0].device.type == device
        assert torch.equal(match[0].float().cpu(), value.float()), f"{key} differs after loading"
    assert tuned_loss < base_loss * 0.8, (
        f"held-out answer loss with the adapter {tuned_loss:.4f} is not clearly below the base "
        f"model's {base_loss:.4f}"
    )
    del tuned, model
    gc.collect()
    torch.cuda.empty_cache()


def _check_training(run: GpuRun, quantization: str) -> None:
    folder = Path(run.adapter_dir)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "loraplex_manifest.json",
    ]
    manifest = json.loads((folder / "loraplex_manifest.json").read_text())
    assert manifest["config"]["spec"]["lora"]["quantization"] == quantization
    assert run.decisions["precision"] == "bf16"
    assert run.decisions["attention"] == "sdpa"
    assert len(run.losses) == STEPS, run.losses
    first, last = statistics.mean(run.losses[:3]), statistics.mean(run.losses[-3:])
    assert last < 0.6 * first, f"loss did not go down: first steps {first:.4f}, last {last:.4f}"
    assert run.tokens_per_second > 0 and run.steps_per_second > 0


def test_qlora_nf4_sft_on_cuda_trains_saves_and_loads(
    qlora_run: GpuRun, base_model: ResolvedBaseModel
) -> None:
    _check_training(qlora_run, "nf4")
    _check_adapter_loads(qlora_run, base_model, quantized=True)


def test_lora_bf16_sft_on_cuda_trains_saves_and_loads(
    lora_run: GpuRun, base_model: ResolvedBaseModel
) -> None:
    _check_training(lora_run, "none")
    _check_adapter_loads(lora_run, base_model, quantized=False)


def test_peak_memory_is_ordered_and_bounded_as_planned(qlora_run: GpuRun, lora_run: GpuRun) -> None:
    """The planner predicts QLoRA below LoRA and never plans less than the run needed."""
    q_plan, l_plan = qlora_run.plan_gib, lora_run.plan_gib
    assert q_plan["total"] < l_plan["total"], "planner should predict QLoRA below LoRA"
    assert q_plan["weights"] < l_plan["weights"]
    # The frozen weights alone: NF4 must hold the base in well under the bf16 footprint.
    assert qlora_run.allocated_at_train_start < 0.75 * lora_run.allocated_at_train_start
    assert qlora_run.peak_allocated < lora_run.peak_allocated, (
        f"measured peak: QLoRA {qlora_run.peak_allocated / GIB:.3f} GiB, "
        f"LoRA {lora_run.peak_allocated / GIB:.3f} GiB"
    )
    for run in (qlora_run, lora_run):
        planned = float(run.plan_gib["total"]) * GIB
        assert planned >= run.peak_allocated, (
            f"{run.method}: planner estimate {planned / GIB:.3f} GiB is below the measured peak "
            f"{run.peak_allocated / GIB:.3f} GiB"
        )


def test_dpo_qlora_on_cuda_trains_and_saves(gpu_settings: TrainerSettings) -> None:
    spec = {
        "method": {
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "max_steps": 8,
                    "batch_size": 8,
                    "learning_rate": 1e-5,
                    "max_length": 512,
                    "logging_steps": 1,
                    "save_steps": 8,
                }
            },
        },
        "lora": {"quantization": "nf4"},
        "data": {"validation_fraction": 0},
    }
    run = _train(gpu_settings, spec, DPO_DATA, "gpu-dpo-qlora")
    assert len(run.losses) == 8 and all(loss == loss for loss in run.losses)  # no NaN
    assert (Path(run.adapter_dir) / "adapter_model.safetensors").is_file()
    assert float(run.plan_gib["total"]) * GIB >= run.peak_allocated
