"""Steps 4 and 5 of a recipe: resume from a checkpoint, save the PEFT folder (checked with the
server's own rules; a full fine-tune saves its model folder, see ``full_model``), write the
lineage manifest, and register the version."""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.trainer.files import DataFile
from services.trainer.recipes.context import RecipeContext, RecipeResult, Stopped
from services.trainer.schemas import ResolvedHyperparameters
from shared.artifacts import file_sha256
from shared.basemodel import ResolvedBaseModel
from shared.datasets import ChatRenderer, PreparedData
from shared.errors import SystemFailure
from shared.registry.versions import FULL_KIND
from shared.servability import LoraLimits, base_linear_shapes, check_adapter_dir

if TYPE_CHECKING:  # training.py imports latest_checkpoint from here
    from services.trainer.recipes.training import ModelSetup, Trained

MANIFEST = "loraplex_manifest.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# A checkpoint's trained weights: an adapter's, or a full fine-tune's whole model (one file, or
# the index of its shards).
CHECKPOINT_WEIGHTS = (
    "adapter_model.safetensors",
    "model.safetensors",
    "model.safetensors.index.json",
)
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")


def latest_checkpoint(output_dir: Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder, to resume a job a dead worker left behind."""
    best: tuple[int, Path] | None = None
    for path in output_dir.glob("checkpoint-*"):
        try:
            step = int(path.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        complete = (path / "trainer_state.json").is_file() and any(
            (path / weights).is_file() for weights in CHECKPOINT_WEIGHTS
        )
        if complete and (best is None or step > best[0]):
            best = (step, path)
    return str(best[1]) if best else None


def restore_trained_adapter(model: Any, checkpoint: str) -> None:
    """Load a checkpoint's trained ("default") adapter before ``Trainer`` resumes from it. When a
    checkpoint also holds other adapters (DPO's frozen ``ref/`` copy), transformers loads only those
    subfolders and skips the trained adapter at the top, so a resumed DPO job would otherwise go on
    from its starting SFT weights with step N's optimizer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(checkpoint)
    if not any(p.is_dir() and (p / ADAPTER_FILES[1]).is_file() for p in folder.iterdir()):
        return  # one adapter: transformers loads it itself
    loaded: Any = set_peft_model_state_dict(model, load_file(folder / ADAPTER_FILES[1]), "default")
    if loaded.unexpected_keys:
        raise SystemFailure(
            f"checkpoint {folder.name} does not fit the model being resumed",
            code="checkpoint_mismatch",
            details=list(loaded.unexpected_keys)[:5],
        )


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
    return dict(config)


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
        # A LoRA manifest stays without the key (the registry reads its absence as "lora"), so
        # re-running an adapter job still gives the bytes, and the version, it gave before.
        **({"kind": FULL_KIND} if ctx.spec.adapter == "none" else {}),
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
    trained: Trained,
    setup: ModelSetup,
    *,
    data: PreparedData,
    hp: ResolvedHyperparameters,
    decisions: dict[str, Any],
    trained_tokens: int,
    save: Callable[[Any, RecipeContext, ResolvedBaseModel], Path] | None = None,
    extra: dict[str, Any] | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> RecipeResult:
    """Save (``save``: a method's own folder writer, default the causal-LM adapter's) and
    register, unless training was stopped (then nothing is kept). ``extra`` and
    ``extra_metrics`` are a method's own manifest keys and metrics."""
    if trained.callback.stop_reason:
        raise Stopped(trained.callback.stop_reason)
    folder = (save or save_adapter)(trained.trainer, ctx, setup.base)
    manifest = write_manifest(
        ctx,
        folder,
        base=setup.base,
        renderer=setup.renderer,
        data=data,
        hp=hp,
        decisions=decisions,
        log_history=trained.trainer.state.log_history,
        trained_tokens=trained_tokens,
    )
    if extra or extra_metrics:
        manifest.update(extra or {})
        manifest["metrics"].update(extra_metrics or {})
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    saved = "model" if manifest.get("kind") == FULL_KIND else "adapter"
    ctx.reporter.event(f"{saved} saved; registering", data={"metrics": manifest["metrics"]})
    version_id = ctx.register(folder, manifest, setup.base)
    return RecipeResult(version_id, folder, manifest, manifest["metrics"], trained_tokens)
