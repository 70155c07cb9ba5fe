"""Which settings fit: the trainer's plan for a job, or a refusal that names the settings which
would fit this machine, each with its estimate by :func:`shared.memory.estimate_plan`.

A LoRA job that does not fit is offered gradient checkpointing and smaller passes (same results),
then QLoRA, then shorter sequences. A full fine-tune (``adapter: none``) is offered the full
settings that would fit, then the LoRA and the QLoRA job that would: the refusal names ``adapter``
when no full fine-tune of these sequences fits at all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NoReturn

from shared.errors import ValidationError
from shared.memory import GIB, MemoryPlan, ModelShape, PlanInput, estimate_plan

QLORA_SETTING = "QLoRA: lora.quantization = 'nf4'"


def plan_or_refuse(
    shape: ModelShape, p: PlanInput, available: int | None, *, may_checkpoint: bool = True
) -> tuple[MemoryPlan, PlanInput]:
    """The plan for ``p`` (gradient checkpointing switched on if that makes it fit, unless the job
    pinned it off: ``may_checkpoint`` False), or a refusal that lists the settings which would
    fit with their estimates, QLoRA among them when a LoRA job does not fit."""
    plan = estimate_plan(shape, p, available)
    if plan.fits:
        return plan, p
    first: list[tuple[str, PlanInput]] = []
    if not p.gradient_checkpointing:
        with_gc = replace(p, gradient_checkpointing=True)
        plan_gc = estimate_plan(shape, with_gc, available)
        if plan_gc.fits and may_checkpoint:
            return plan_gc, with_gc
        first.append(("gradient_checkpointing true", with_gc))
    smaller: list[tuple[str, PlanInput]] = []
    bs = p.batch_size
    while bs > 1:
        bs //= 2
        factor = p.batch_size // bs
        smaller.append(
            (
                f"micro_batch_size {bs} (batch_size unchanged: {factor} accumulated passes per "
                "step) with gradient checkpointing",
                replace(p, batch_size=bs, gradient_checkpointing=True),
            )
        )
    shorter = []
    length = p.seq_len
    while length > 128:
        length //= 2
        shorter.append((f"max_length {length}", replace(p, seq_len=length)))
    # Same results first (checkpointing, smaller passes), then QLoRA, then shorter sequences.
    plans = [(text, estimate_plan(shape, o, available)) for text, o in first + smaller]
    if p.full:
        _refuse_full(shape, p, available, plan, plans, first + smaller, shorter)
    qlora: list[tuple[str, MemoryPlan]] = []
    if p.quantization != "nf4":
        # A LoRA job that does not fit may fit as QLoRA: the first QLoRA setting that fits (as it
        # is, with checkpointing, with smaller passes) is offered with its own estimate.
        variants = [(f"{QLORA_SETTING} with {text}", o) for text, o in first + smaller]
        qlora = [
            (text, estimate_plan(shape, replace(o, quantization="nf4"), available))
            for text, o in [(QLORA_SETTING, p), *variants]
        ]
        plans += [q for q in qlora if q[1].fits][:1]
    plans += [(text, estimate_plan(shape, o, available)) for text, o in shorter]
    suggestions = [f"{text} (about {o.total / GIB:.1f} GiB)" for text, o in plans if o.fits]
    need, have = plan.total / GIB, (available or 0) / GIB
    if suggestions:
        advice = f"try: {suggestions[0]}"
    elif qlora:
        least = min(o.total for _, o in qlora) / GIB
        advice = f"nothing fits this machine, not even QLoRA (about {least:.1f} GiB)"
    else:
        advice = "nothing fits this machine"
    raise ValidationError(
        f"this job needs about {need:.1f} GiB but only {have:.1f} GiB is available; {advice}",
        param="hyperparameters",
        code="insufficient_memory",
        details=[
            f"estimate (GiB): {plan.summary()}",
            *(f"would fit: {s}" for s in suggestions),
        ],
    )


def _refuse_full(
    shape: ModelShape,
    p: PlanInput,
    available: int | None,
    plan: MemoryPlan,
    same_results: list[tuple[str, MemoryPlan]],
    variants: list[tuple[str, PlanInput]],
    shorter: list[tuple[str, PlanInput]],
) -> NoReturn:
    """The refusal of a full fine-tune that does not fit: the full settings that would (same
    results), then the first LoRA and the first QLoRA setting that would (as the job is, with
    checkpointing, with smaller passes), then shorter sequences, each with its estimate. Names
    ``adapter`` when no full fine-tune of these sequences fits at all."""
    alternatives: list[tuple[str, MemoryPlan]] = []
    smallest: dict[str, float] = {}
    for label, quantization in (
        (f"LoRA: adapter 'lora' (lora.r {p.r})", "none"),
        (f"QLoRA: adapter 'lora' (lora.r {p.r}) with lora.quantization 'nf4'", "nf4"),
    ):
        tried = [
            (
                label + (f" with {text}" if text else ""),
                estimate_plan(shape, replace(o, full=False, quantization=quantization), available),
            )
            for text, o in [("", p), *variants]
        ]
        smallest[quantization] = min(o.total for _, o in tried) / GIB
        alternatives += [t for t in tried if t[1].fits][:1]
    full_fits = [t for t in same_results if t[1].fits]
    truncated = [(text, estimate_plan(shape, o, available)) for text, o in shorter]
    fitting = [t for t in full_fits + alternatives + truncated if t[1].fits]
    suggestions = [f"{text} (about {o.total / GIB:.1f} GiB)" for text, o in fitting]
    need, have = plan.total / GIB, (available or 0) / GIB
    if full_fits:
        message = f"this job needs about {need:.1f} GiB but only {have:.1f} GiB is available; "
        message += f"try: {suggestions[0]}"
    else:
        message = (
            f"full fine-tuning (adapter 'none') needs about {need:.1f} GiB, but only {have:.1f} "
            "GiB is available; "
        )
        if alternatives:
            message += "would fit: " + "; ".join(
                f"{text} (about {o.total / GIB:.1f} GiB)" for text, o in alternatives
            )
        else:
            message += (
                f"nothing fits this machine, not even QLoRA (about {smallest['nf4']:.1f} GiB)"
            )
    raise ValidationError(
        message,
        param="hyperparameters" if full_fits else "adapter",
        code="insufficient_memory",
        details=[f"estimate (GiB): {plan.summary()}", *(f"would fit: {s}" for s in suggestions)],
    )
