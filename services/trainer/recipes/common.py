"""Building blocks the SFT and DPO recipes share, so each recipe reads top to bottom.

Nothing here knows about HTTP or jobs: a recipe gets a :class:`RecipeContext` (the spec, the data
files, a scratch folder, a reporter for events and stop requests, and a ``register`` function) and
returns a :class:`RecipeResult`. The worker and ``loraplex train run`` differ only in the context
they pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.trainer.config import TrainerSettings
from services.trainer.memory import (
    MemoryPlan,
    ModelShape,
    PlanInput,
    available_memory,
    plan_or_refuse,
)
from services.trainer.methods import get_method
from services.trainer.schemas import JobSpec, ResolvedHyperparameters
from shared.basemodel import ResolvedBaseModel, resolve_base_model
from shared.datasets import ChatRenderer, PreparedData, load_examples, prepare, stop_token_ids
from shared.doctor import cpu_prefers_bf16
from shared.errors import SystemFailure, ValidationError
from shared.servability import (
    LoraLimits,
    base_linear_shapes,
    check_adapter_dir,
    check_lora_settings,
)

log = logging.getLogger(__name__)

MANIFEST = "loraplex_manifest.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")


class Reporter(Protocol):
    """Where a recipe sends events and asks whether it should stop."""

    def event(
        self, message: str, *, level: str = "info", type: str = "message", data: Any = None
    ) -> None: ...

    def should_stop(self) -> str | None:
        """A reason to stop at the next step (``"cancelled"``, ``"claim lost"``), else None."""
        ...

    def phase(self, status: str) -> None:
        """The job moved on (``"running"`` once its data passed validation)."""
        ...


class Stopped(Exception):
    """Training stopped on request before it finished; nothing was saved or registered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DataFile:
    path: Path
    name: str  # what errors call it: the uploaded file name or the path given
    file_id: str | None = None
    sha256: str | None = None


@dataclass
class RecipeContext:
    spec: JobSpec
    settings: TrainerSettings
    train_file: DataFile
    validation_file: DataFile | None
    output_dir: Path
    reporter: Reporter
    register: Callable[[Path, dict[str, Any], ResolvedBaseModel], str]
    adapter_name: str
    job_id: str | None = None
    base_adapter_dir: Path | None = None
    base_adapter_lineage: dict[str, Any] | None = None


@dataclass
class RecipeResult:
    version_id: str
    adapter_dir: Path
    manifest: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    trained_tokens: int = 0


# -- model -------------------------------------------------------------------------------------
def quiet_libraries() -> None:
    """Our events report progress; the libraries' own bars would only clutter job logs."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def setup_base(ctx: RecipeContext) -> ResolvedBaseModel:
    from shared.registry.db import open_registry

    quiet_libraries()
    if ctx.settings.torch_threads:
        # On a shared machine fewer threads can be much faster: a 2-thread OpenMP region waits
        # for both threads, and an oversubscribed CPU deschedules one (measured 3 s vs 25-58 s
        # per step on the 2-core dev box under load).
        import torch

        torch.set_num_threads(ctx.settings.torch_threads)

    registry = open_registry(ctx.settings)
    try:
        with registry.session() as session:
            return resolve_base_model(ctx.settings, ctx.spec.model, session)
    finally:
        registry.dispose()


def setup_tokenizer(base: ResolvedBaseModel) -> tuple[Any, ChatRenderer]:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    try:
        generation = GenerationConfig.from_pretrained(base.path)
    except OSError:
        generation = None
    return tokenizer, ChatRenderer(tokenizer, stop_token_ids(tokenizer, generation))


def check_lora_servable(spec: JobSpec, settings: TrainerSettings) -> None:
    """Refuse LoRA settings the server cannot load, before any work is done."""
    lora = spec.lora
    reasons = check_lora_settings(
        r=lora.r,
        lora_alpha=lora.alpha,
        use_dora=lora.use_dora,
        bias=lora.bias,
        modules_to_save=lora.modules_to_save,
        limits=LoraLimits(max_rank=settings.max_lora_rank),
    )
    if reasons:
        raise ValidationError(
            f"the adapter could not be served: {reasons[0]}",
            param="lora",
            code="unservable_lora_settings",
            details=reasons,
        )


def lora_config(spec: JobSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def choose_precision(ctx: RecipeContext, hp: ResolvedHyperparameters) -> str:
    """bf16 where the hardware computes it faster than fp32: on CUDA where it is supported, on
    a CPU where a measured matmul says so (shared.doctor.cpu_prefers_bf16). The job's events say
    which and why."""
    if hp.precision != "auto":
        ctx.reporter.event(f"precision {hp.precision} (set in the job)")
        return hp.precision
    import torch

    if torch.cuda.is_available():
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        ctx.reporter.event(f"precision {precision} (CUDA bf16 support)")
        return precision
    bf16, why = cpu_prefers_bf16()
    ctx.reporter.event(f"precision {'bf16' if bf16 else 'fp32'}: {why}")
    return "bf16" if bf16 else "fp32"


EAGER_ATTENTION_MAX_TOKENS = 512


def choose_attention(longest: int, batching: str = "padded") -> str:
    """Eager attention for short sequences on CPU: measured ~10% faster per step than SDPA's CPU
    flash kernel at ~100 tokens, whose backward dominates there. Its score matrices grow with the
    square of the length, so long sequences (and padding-free rows, which need SDPA's block mask)
    keep SDPA."""
    if _cuda() or batching == "padding_free" or longest > EAGER_ATTENTION_MAX_TOKENS:
        return "sdpa"
    return "eager"


def load_model(
    ctx: RecipeContext, base: ResolvedBaseModel, precision: str, attention: str = "sdpa"
) -> Any:
    """The base model (bf16/fp32, or NF4 for QLoRA), with the starting adapter if there is one."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = None
    if ctx.spec.lora.quantization == "nf4":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(
        base.path, dtype=dtype, quantization_config=quantization, attn_implementation=attention
    )
    if ctx.base_adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, ctx.base_adapter_dir, is_trainable=True)
        # Its config names the base by registry name; peft's checkpoint saving looks that up as a
        # path, so point it at the folder (the saved adapter gets the registry name back).
        for config in model.peft_config.values():
            config.base_model_name_or_path = str(base.path)
    return model


# -- data --------------------------------------------------------------------------------------
def prepare_data(
    ctx: RecipeContext, renderer: ChatRenderer, kind: str, hp: ResolvedHyperparameters
) -> PreparedData:
    """Load, clean, split, render and validate; a blocking phase that fails on bad data."""
    train = load_examples(ctx.train_file.path, source=ctx.train_file.name)
    validation = (
        load_examples(ctx.validation_file.path, source=ctx.validation_file.name)
        if ctx.validation_file
        else None
    )
    data = prepare(
        train,
        validation,
        renderer,
        kind=kind,
        max_length=hp.max_length,
        seed=hp.seed,
        validation_fraction=ctx.spec.data.validation_fraction,
        truncation=ctx.spec.data.truncation,
        near_duplicate_threshold=ctx.spec.data.near_duplicate_threshold,
    )
    report = data.report
    section = report["train"]
    ctx.reporter.event(
        f"validated {section['examples']} training and {report['validation']['examples']} "
        f"validation examples ({len(report['errors'])} errors, {len(report['warnings'])} warnings)",
        level="error" if report["errors"] else "info",
        type="validation",
        data=report,
    )
    for warning in report["warnings"]:
        ctx.reporter.event(warning, level="warn")
    data.raise_for_errors()
    ctx.reporter.phase("running")
    return data


def mean_sequence(data: PreparedData) -> float:
    lengths = [r.n_tokens for r in data.train_rendered] + [p.n_tokens for p in data.train_pairs]
    return sum(lengths) / max(1, len(lengths))


def longest_sequence(data: PreparedData) -> int:
    lengths = [r.n_tokens for r in data.train_rendered] + [p.n_tokens for p in data.train_pairs]
    return max(lengths, default=1)


def plan_memory(
    ctx: RecipeContext,
    base: ResolvedBaseModel,
    data: PreparedData,
    hp: ResolvedHyperparameters,
    precision: str,
    micro_batch: int,
) -> tuple[MemoryPlan, bool]:
    """Estimate memory; refuse with a suggestion if it cannot fit. Returns (plan, grad ckpt)."""
    shape = ModelShape.from_folder(base.path)
    want_gc = hp.gradient_checkpointing is True
    plan_input = PlanInput(
        sequences_per_example=get_method(ctx.spec.method.type).sequences_per_example,
        quantization=ctx.spec.lora.quantization,
        r=ctx.spec.lora.r,
        target_modules=ctx.spec.lora.target_modules,
        batch_size=micro_batch,
        seq_len=min(hp.max_length, longest_sequence(data)),
        gradient_checkpointing=want_gc,
        weight_bytes=2 if precision == "bf16" else 4,
    )
    available = available_memory(ctx.settings.memory_limit_bytes)
    if hp.gradient_checkpointing is False:
        # The user pinned it off: plan exactly that, without switching it on for them.
        from services.trainer.memory import estimate

        plan = estimate(shape, plan_input, available)
        if not plan.fits:
            plan_or_refuse(shape, plan_input, available)
        chosen = plan_input
    else:
        plan, chosen = plan_or_refuse(shape, plan_input, available)
    ctx.reporter.event(
        f"memory plan: about {plan.total / 1024**3:.2f} GiB needed, "
        f"{(available or 0) / 1024**3:.1f} GiB available"
        + ("; gradient checkpointing on" if chosen.gradient_checkpointing else ""),
        data={"memory": plan.summary()},
    )
    return plan, chosen.gradient_checkpointing


TOKENS_PER_PASS = 160


def choose_micro_batch(hp: ResolvedHyperparameters, mean_tokens: float) -> int:
    """Examples per forward pass. On CPU, tokens/s was the same for passes of 190 and 380 tokens
    (1 thread, ~100-token examples) while activation memory grows with every example, so take the
    smallest divisor of batch_size that reaches TOKENS_PER_PASS; accumulation makes up the rest
    of the batch, with the loss normalised over all its tokens as one batch would be."""
    if isinstance(hp.micro_batch_size, int):
        return hp.micro_batch_size
    if _cuda():
        return hp.batch_size
    for micro in range(1, hp.batch_size + 1):
        if hp.batch_size % micro == 0 and micro * mean_tokens >= TOKENS_PER_PASS:
            return micro
    return hp.batch_size


def steps_per_epoch(n_examples: int, hp: ResolvedHyperparameters) -> int:
    return max(1, math.ceil(n_examples / (hp.batch_size * hp.gradient_accumulation_steps)))


def total_steps(n_examples: int, hp: ResolvedHyperparameters) -> int:
    full = steps_per_epoch(n_examples, hp) * hp.n_epochs
    return min(full, hp.max_steps) if hp.max_steps else full


def common_args(
    ctx: RecipeContext,
    hp: ResolvedHyperparameters,
    n_train: int,
    precision: str,
    gradient_checkpointing: bool,
    has_eval: bool,
    micro_batch: int,
) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO: curriculum defaults, seeded, checkpointed."""
    steps = total_steps(n_train, hp)
    save_steps = hp.save_steps or max(1, math.ceil(steps / 5))
    return {
        "output_dir": str(ctx.output_dir),
        "num_train_epochs": hp.n_epochs,
        "max_steps": hp.max_steps or -1,
        "per_device_train_batch_size": micro_batch,
        "per_device_eval_batch_size": micro_batch,
        # batch_size stays the number of examples per optimizer step.
        "gradient_accumulation_steps": hp.gradient_accumulation_steps
        * (hp.batch_size // micro_batch),
        "learning_rate": hp.learning_rate,
        "lr_scheduler_type": hp.lr_scheduler_type,
        # TRL 1.16 refuses warmup_ratio; the same 5% expressed in steps.
        "warmup_steps": math.ceil(steps * hp.warmup_ratio),
        "weight_decay": hp.weight_decay,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "bf16": precision == "bf16",
        "gradient_checkpointing": gradient_checkpointing,
        "logging_steps": hp.logging_steps,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": save_steps if has_eval else None,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_cpu": not _cuda(),
    }


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def latest_checkpoint(output_dir: Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder, to resume a job a dead worker left behind."""
    best: tuple[int, Path] | None = None
    for path in output_dir.glob("checkpoint-*"):
        try:
            step = int(path.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        complete = (path / "trainer_state.json").is_file() and (
            path / "adapter_model.safetensors"
        ).is_file()
        if complete and (best is None or step > best[0]):
            best = (step, path)
    return str(best[1]) if best else None


# -- progress ----------------------------------------------------------------------------------
def make_progress_callback(reporter: Reporter, trained_tokens_per_epoch: int) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Loss, learning rate, tokens/s, progress and ETA as events; stop on request."""

        def __init__(self) -> None:
            self.start = time.monotonic()
            self.last_time = self.start
            self.last_tokens = 0.0
            self.stop_reason: str | None = None
            self.last_check = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start = self.last_time = time.monotonic()
            reporter.event(
                f"training started at step {state.global_step} of {state.max_steps}",
                data={"step": state.global_step, "total_steps": state.max_steps},
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.monotonic()
            if now - self.last_check >= 0.5 or state.global_step >= state.max_steps:
                self.last_check = now
                reason = reporter.should_stop()
                if reason:
                    self.stop_reason = reason
                    control.should_training_stop = True
                    control.should_save = False
                    control.should_evaluate = False

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = dict(logs or {})
            now = time.monotonic()
            step, total = state.global_step, max(1, state.max_steps)
            tokens = float(logs.get("num_tokens", 0.0))
            rate = (tokens - self.last_tokens) / max(1e-6, now - self.last_time) if tokens else None
            self.last_time, self.last_tokens = now, tokens or self.last_tokens
            progress = step / total
            elapsed = now - self.start
            eta = elapsed / progress * (1 - progress) if progress > 0 else None
            if "loss" in logs:
                data = {
                    "step": step,
                    "total_steps": total,
                    "train_loss": logs.get("loss"),
                    "learning_rate": logs.get("learning_rate"),
                    "tokens_per_second": round(rate, 1) if rate else None,
                    "progress": round(100 * progress, 1),
                    "eta_seconds": round(eta, 1) if eta is not None else None,
                    "epoch": logs.get("epoch"),
                }
                for key in ("mean_token_accuracy", "rewards/accuracies", "rewards/margins"):
                    if key in logs:
                        data[key.replace("/", "_")] = logs[key]
                reporter.event(
                    f"step {step}/{total}: training loss={logs['loss']:.4f}",
                    type="metrics",
                    data=data,
                )
            elif "eval_loss" in logs:
                reporter.event(
                    f"step {step}/{total}: validation loss={logs['eval_loss']:.4f}",
                    type="metrics",
                    data={
                        "step": step,
                        "valid_loss": logs["eval_loss"],
                        "valid_mean_token_accuracy": logs.get("eval_mean_token_accuracy"),
                    },
                )

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
            accs = [
                h["mean_token_accuracy"] for h in state.log_history if "mean_token_accuracy" in h
            ]
            reporter.event(
                f"checkpoint saved at step {state.global_step}",
                type="checkpoint",
                data={
                    "step": state.global_step,
                    "path": str(Path(args.output_dir) / f"checkpoint-{state.global_step}"),
                    "metrics": {
                        "step": state.global_step,
                        "train_loss": losses[-1] if losses else None,
                        "valid_loss": evals[-1] if evals else None,
                        "train_mean_token_accuracy": accs[-1] if accs else None,
                    },
                },
            )

    _ = trained_tokens_per_epoch
    return ProgressCallback()


# -- save and register ---------------------------------------------------------------------------
def _normalise_adapter_config(path: Path, base_name: str) -> dict[str, Any]:
    """Registry name as ``base_model_name_or_path``; sorted lists and keys so equal adapters are
    equal bytes (peft writes target modules from a set, whose order varies between processes)."""
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_name
    config["revision"] = None
    for key, value in list(config.items()):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            config[key] = sorted(value)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def save_adapter(trainer: Any, ctx: RecipeContext, base: ResolvedBaseModel) -> Path:
    """Write the PEFT folder (adapter files only) and check it with the server's own rules."""
    final = ctx.output_dir / "final"
    tmp = ctx.output_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    trainer.model.save_pretrained(
        str(tmp), selected_adapters=["default"], save_embedding_layers=False
    )
    for item in tmp.iterdir():
        # Tokenizer and template files are left out on purpose: vLLM serves adapters with the
        # base model's tokenizer, so shipping our own would only pretend to control it.
        if item.name not in ADAPTER_FILES:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    _normalise_adapter_config(tmp / "adapter_config.json", base.name)
    shape_reasons = check_adapter_dir(
        tmp,
        limits=LoraLimits(max_rank=ctx.settings.max_lora_rank),
        base_shapes=base_linear_shapes(base.path),
    )
    if shape_reasons:
        raise SystemFailure(
            f"the trained adapter is not servable: {shape_reasons[0]}",
            code="unservable_adapter",
            details=shape_reasons,
        )
    tmp.rename(final)
    return final


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def final_metrics(log_history: list[dict[str, Any]]) -> tuple[dict[str, float], list[list[float]]]:
    curve = [[h["step"], round(float(h["loss"]), 6)] for h in log_history if "loss" in h]
    metrics: dict[str, float] = {}
    if curve:
        metrics["train_loss"] = curve[-1][1]
    evals = [h for h in log_history if "eval_loss" in h]
    if evals:
        metrics["valid_loss"] = round(float(evals[-1]["eval_loss"]), 6)
        if "eval_mean_token_accuracy" in evals[-1]:
            metrics["valid_mean_token_accuracy"] = round(
                float(evals[-1]["eval_mean_token_accuracy"]), 6
            )
    for h in reversed(log_history):
        for key in ("mean_token_accuracy", "rewards/accuracies", "rewards/margins"):
            if key in h and key.replace("/", "_") not in metrics:
                metrics[key.replace("/", "_")] = round(float(h[key]), 6)
    return metrics, curve


def write_manifest(
    ctx: RecipeContext,
    folder: Path,
    *,
    base: ResolvedBaseModel,
    renderer: ChatRenderer,
    data: PreparedData,
    hp: ResolvedHyperparameters,
    decisions: dict[str, Any],
    log_history: list[dict[str, Any]],
    trained_tokens: int,
) -> dict[str, Any]:
    """Lineage of the adapter. No timestamps or run times: equal training gives equal bytes, so
    the registry recognises a re-run (or a resumed job) as the same version."""
    metrics, curve = final_metrics(log_history)

    def describe(f: DataFile | None) -> dict[str, Any] | None:
        if f is None:
            return None
        return {"id": f.file_id, "name": f.name, "sha256": f.sha256 or file_sha256(f.path)}

    manifest = {
        "schema": "loraplex.adapter/v1",
        "adapter_name": ctx.adapter_name,
        "method": ctx.spec.method.type,
        "base_model": {"name": base.name, "weights_sha256": base.weights_sha256},
        "base_adapter": ctx.base_adapter_lineage,
        "datasets": {
            "training_file": describe(ctx.train_file),
            "validation_file": describe(ctx.validation_file),
        },
        "config": {
            "spec": ctx.spec.model_dump(
                mode="json", exclude={"training_file", "validation_file"}, by_alias=False
            ),
            "hyperparameters": hp.model_dump(mode="json"),
            "decisions": decisions,
        },
        "libraries": library_versions(),
        "chat_template_sha256": renderer.template_sha256,
        "stop_tokens": renderer.stop_tokens,
        "validation_report": data.report,
        "trained_tokens": trained_tokens,
        "metrics": metrics,
        "loss_curve": curve,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def finish(
    ctx: RecipeContext,
    trainer: Any,
    callback: Any,
    *,
    base: ResolvedBaseModel,
    renderer: ChatRenderer,
    data: PreparedData,
    hp: ResolvedHyperparameters,
    decisions: dict[str, Any],
    trained_tokens: int,
) -> RecipeResult:
    """Save and register, unless training was stopped (then nothing is kept)."""
    if callback.stop_reason:
        raise Stopped(callback.stop_reason)
    folder = save_adapter(trainer, ctx, base)
    manifest = write_manifest(
        ctx,
        folder,
        base=base,
        renderer=renderer,
        data=data,
        hp=hp,
        decisions=decisions,
        log_history=trainer.state.log_history,
        trained_tokens=trained_tokens,
    )
    ctx.reporter.event("adapter saved; registering", data={"metrics": manifest["metrics"]})
    version_id = ctx.register(folder, manifest, base)
    return RecipeResult(version_id, folder, manifest, manifest["metrics"], trained_tokens)
