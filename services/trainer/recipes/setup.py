"""Step 1 of a recipe, the model: the base, its tokenizer and template, the LoRA settings the
server accepts, and the loaded model (bf16/fp32, or NF4 for QLoRA)."""

from __future__ import annotations

from typing import Any

from services.trainer.config import TrainerSettings
from services.trainer.recipes.context import RecipeContext
from services.trainer.schemas import JobSpec
from shared.basemodel import ResolvedBaseModel, resolve_base_model
from shared.datasets import ChatRenderer, stop_token_ids
from shared.errors import ValidationError
from shared.servability import LoraLimits, check_lora_settings


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


def weight_storage(model: Any) -> dict[str, Any]:
    """How the frozen base's linear layers are stored, measured on the live model rather than read
    from the spec: their classes, how many are 4-bit, and bytes per weight including the 4-bit
    scales (4 in fp32, 2 in bf16, about 0.52 in NF4 with double quantisation). LoRA's own layers
    and the output head (bitsandbytes leaves it unquantised) are not counted."""
    import torch

    head = model.get_output_embeddings()
    classes: set[str] = set()
    layers = four_bit = nbytes = weights = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head or "lora_" in name:
            continue
        layers += 1
        classes.add(f"{type(module).__module__}.{type(module).__qualname__}")
        weight = module.weight
        nbytes += weight.numel() * weight.element_size()
        state = getattr(weight, "quant_state", None)
        if state is None:
            weights += weight.numel()
            continue
        four_bit += 1
        weights += state.shape.numel()  # the packed tensor holds two weights per byte
        scales = state.as_dict(packed=True).values()
        nbytes += sum(t.numel() * t.element_size() for t in scales if isinstance(t, torch.Tensor))
    return {
        "linear_layers": layers,
        "linear4bit_layers": four_bit,
        "linear_classes": sorted(classes),
        "linear_weight_bytes": nbytes,
        "bytes_per_linear_weight": round(nbytes / max(1, weights), 4),
    }
