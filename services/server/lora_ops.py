"""Grouped LoRA kernels for vLLM's CPU backend: one batched matmul per layer for every adapter.

vLLM's torch ops copy one weight matrix per token (``weights[indices]``) before an ``einsum``;
the first version of our plugin looped over the adapters of the batch with a mask, a
``nonzero`` and an indexed write each, at every one of the ~420 LoRA op calls of a step. With
eight adapters mixed that was ~20,000 small torch calls per decode step, more than the base
model's own work (``bench/lora_profile.py`` measures both).

Here the token -> adapter layout of a step is computed once (:func:`group_rows`, cached on the
step's index tensor) and every op is a fixed handful of calls whatever the number of adapters:
the rows are gathered into a padded ``(slots, length, features)`` block, sorted by adapter, and
multiplied against the stacked weights ``(max_loras, 1, out, in)`` as a view (no weight copy) with
one ``torch.bmm``; the result goes back to its rows with one indexed add. ``slots`` spans only
the adapters present (lowest to highest slot) and ``length`` is the most rows any of them has,
so the padding never costs more than multiplying every row by every present adapter, and
nothing when the rows are spread evenly (the mixed decode batch) or one adapter has them all.
Rows with slot ``-1`` (no adapter) get no delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_CACHE_ATTR = "_loraplex_groups"
_CACHE_SIZE = 4


@dataclass(frozen=True)
class Grouping:
    """Where each row of a step sits in the padded ``(slots, length)`` block of its adapter."""

    rows_total: int
    lo: int  # first slot present; padded block s holds slot lo + s
    slots: int  # 0 when no row has an adapter
    length: int
    gather: torch.Tensor  # (slots * length,) source row of each padded position (pads -> 0)
    rows: torch.Tensor  # (m,) rows that have an adapter
    pos: torch.Tensor  # (m,) padded position of each of those rows
    identity: bool  # padded block == the rows as they are: no gather or scatter needed

    @property
    def empty(self) -> bool:
        return self.slots == 0


def group_rows(indices: torch.Tensor) -> Grouping:
    """The padded layout of rows ``indices`` (one LoRA slot per row, ``-1`` = none)."""
    idx = indices.reshape(-1).to(torch.long)
    n = idx.numel()
    rows = (idx >= 0).nonzero().squeeze(1)
    m = rows.numel()
    if m == 0:
        none = torch.empty(0, dtype=torch.long, device=idx.device)
        return Grouping(n, 0, 0, 0, none, none, none, False)
    slot_of = idx.index_select(0, rows)
    lo_t, hi_t = torch.aminmax(slot_of)
    lo, hi = int(lo_t), int(hi_t)
    rel = slot_of - lo
    slots = hi - lo + 1
    counts = torch.bincount(rel, minlength=slots)
    length = int(counts.max())
    order = torch.argsort(rel, stable=True)
    sorted_rel = rel.index_select(0, order)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(m, device=idx.device) - starts.index_select(0, sorted_rel)
    pos = torch.empty_like(rows)
    pos[order] = sorted_rel * length + rank
    gather = torch.zeros(slots * length, dtype=torch.long, device=idx.device)
    gather[pos] = rows
    identity = m == n and slots * length == n and bool(torch.equal(pos, rows))
    return Grouping(n, lo, slots, length, gather, rows, pos, identity)


def cached_grouping(owner: Any, indices: torch.Tensor) -> Grouping:
    """``group_rows`` once per step: vLLM rewrites its index tensors in place each step, which
    bumps their version counter, so (storage, offset, size, version) names one step's layout."""
    key = (indices.data_ptr(), indices.numel(), indices._version)
    cache: dict[tuple[int, int, int], Grouping] | None = getattr(owner, _CACHE_ATTR, None)
    if cache is None:
        cache = {}
        setattr(owner, _CACHE_ATTR, cache)
    found = cache.get(key)
    if found is None:
        found = group_rows(indices)
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = found
    return found


def _slot_weights(stacked: torch.Tensor, g: Grouping) -> torch.Tensor:
    """``(slots, in, out)`` view of the present adapters' weights, stored ``(..., out, in)``."""
    if stacked.dim() == 4:
        stacked = stacked.squeeze(1)
    return stacked[g.lo : g.lo + g.slots].transpose(1, 2)


def padded(g: Grouping, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(slots, length, features)``: the rows in adapter order, converted to ``dtype``."""
    block = rows if g.identity else rows.index_select(0, g.gather)
    return block.to(dtype).view(g.slots, g.length, rows.size(-1))


def shrink_into(
    g: Grouping, x_padded: torch.Tensor, a_stacked: torch.Tensor, out: torch.Tensor, scale: float
) -> None:
    """``out[r, :rank] = scale * x[r] @ A[slot(r)].T`` (zeros for rows without an adapter), from
    ``x_padded`` = :func:`padded` of the inputs."""
    h = torch.bmm(x_padded, _slot_weights(a_stacked, g)).view(-1, a_stacked.size(-2))
    if scale != 1.0:
        h = h * scale
    target = out[:, : h.size(1)]
    if g.identity:
        target.copy_(h)
        return
    if g.rows.numel() != g.rows_total:
        target.zero_()
    target.index_copy_(0, g.rows, h.index_select(0, g.pos).to(out.dtype))


def expand_add(
    g: Grouping,
    h_padded: torch.Tensor,
    b_stacked: torch.Tensor,
    out: torch.Tensor,
    *,
    add: bool = True,
) -> None:
    """``out[r] (+)= h[r] @ B[slot(r)].T`` over the common width, from ``h_padded`` =
    :func:`padded` of the shrunk rows; rows without an adapter get no delta (zeros when ``add``
    is false)."""
    rank = b_stacked.size(-1)
    y = torch.bmm(h_padded[..., :rank], _slot_weights(b_stacked, g))
    common = min(y.size(-1), out.size(1))
    y = y.view(-1, y.size(-1))[:, :common]
    target = out[:, :common]
    if g.identity:
        if add:
            target.add_(y)
        else:
            target.copy_(y)
        return
    if not add:
        target.zero_()
    target.index_add_(0, g.rows, y.index_select(0, g.pos).to(out.dtype))


def fused_add(
    g: Grouping,
    x: torch.Tensor,
    a_stacked: torch.Tensor,
    b_stacked: torch.Tensor,
    out: torch.Tensor,
    scale: float,
) -> None:
    """``out[r] += scale * x[r] @ A[slot(r)].T @ B[slot(r)].T``: shrink and expand on the padded
    block without writing the rank-sized intermediate back to row order in between."""
    if g.empty:
        return
    h = torch.bmm(padded(g, x, a_stacked.dtype), _slot_weights(a_stacked, g))
    if scale != 1.0:
        h = h * scale
    expand_add(g, h.to(b_stacked.dtype), b_stacked, out)


def per_row(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    output: torch.Tensor,
    *,
    mode: str,
    scale: float = 1.0,
    add: bool = True,
) -> None:
    """One uncached op in the shape of vLLM's ``bgmv_*``: ``mode`` "shrink" writes ``output``,
    "expand" adds to (or writes) it. A single input row or a single index broadcasts, as there."""
    rows = max(inputs.size(0), indices.size(0))
    if inputs.size(0) != rows:
        if inputs.size(0) != 1:
            raise ValueError(f"LoRA op: {inputs.size(0)} input rows but {rows} indices")
        inputs = inputs.expand(rows, -1)
    if indices.size(0) != rows:
        if indices.size(0) != 1:
            raise ValueError(f"LoRA op: {rows} input rows but {indices.size(0)} indices")
        indices = indices.expand(rows)
    if output.size(0) != rows:
        if rows != 1 or mode == "shrink":
            raise ValueError(f"LoRA op: {output.size(0)} output rows for {rows} rows")
        # vLLM's expand adds a single computed row to every output row; keep that.
        one = torch.zeros((1, output.size(1)), dtype=output.dtype, device=output.device)
        per_row(inputs, weights, indices, one, mode=mode, add=False)
        if add:
            output += one
        else:
            output.copy_(one.expand_as(output))
        return
    g = group_rows(indices)
    if mode == "shrink":
        shrink_into(g, _padded_or_empty(g, inputs, weights.dtype), weights, output, scale)
    else:
        expand_add(g, _padded_or_empty(g, inputs, weights.dtype), weights, output, add=add)


def _padded_or_empty(g: Grouping, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if g.empty:
        return torch.empty((0, 0, rows.size(-1)), dtype=dtype, device=rows.device)
    return padded(g, rows, dtype)


# -- PunicaWrapperCPU methods ------------------------------------------------------------------
# Installed on vLLM's class by the plugin (``self`` is the wrapper). They read the step's
# per-token slots from ``token_lora_indices`` for prefill and decode alike: vLLM's prefill path
# only expands its per-sequence segments back to that same per-token vector.


def _step(wrapper: Any, rows: int) -> Grouping | None:
    """The step's cached layout, or None when the rows are not one per token (then the uncached
    op applies vLLM's broadcasting rules, or says what does not fit)."""
    indices: torch.Tensor = wrapper.token_lora_indices
    if indices.numel() != rows:
        return None
    return cached_grouping(wrapper, indices)


def add_shrink(
    self: Any,
    y: tuple[torch.Tensor, ...] | torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: tuple[torch.Tensor, ...],
    scale: float,
    **kwargs: Any,
) -> None:
    x = x.view(-1, x.shape[-1])
    g = _step(self, x.size(0))
    if g is None:
        for i, a in enumerate(lora_a_stacked):
            per_row(x, a, self.token_lora_indices, y[i], mode="shrink", scale=scale)
        return
    if g.empty:
        return  # vLLM's callers pass zeroed buffers, and expand adds nothing either
    x_padded = padded(g, x, lora_a_stacked[0].dtype)
    for i, a in enumerate(lora_a_stacked):
        shrink_into(g, x_padded, a, y[i], scale)


def add_expand(
    self: Any,
    y: torch.Tensor,
    x: tuple[torch.Tensor, ...] | torch.Tensor,
    lora_b_stacked: tuple[torch.Tensor, ...],
    output_slices: tuple[int, ...],
    offset_start: int = 0,
    add_inputs: bool = True,
    **kwargs: Any,
) -> None:
    y = y.view(-1, y.shape[-1])
    g = _step(self, y.size(0))
    offset = offset_start
    if g is None:
        for i, b in enumerate(lora_b_stacked):
            part = y[:, offset : offset + output_slices[i]]
            per_row(x[i], b, self.token_lora_indices, part, mode="expand", add=add_inputs)
            offset += output_slices[i]
        return
    if g.empty:
        return
    dtype = lora_b_stacked[0].dtype
    if isinstance(x, torch.Tensor) and not g.identity:
        # One gather for every slice: (slices, rows, rank) -> (slices, slots, length, rank).
        blocks = x.index_select(1, g.gather).to(dtype).view(x.size(0), g.slots, g.length, -1)
    else:
        blocks = [padded(g, part, dtype) for part in x]  # type: ignore[assignment]
    for i, b in enumerate(lora_b_stacked):
        part = y[:, offset : offset + output_slices[i]]
        expand_add(g, blocks[i], b, part, add=add_inputs)
        offset += output_slices[i]


def add_lora_linear(
    self: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
    *,
    buffer: tuple[torch.Tensor, ...] | None = None,
    **kwargs: Any,
) -> None:
    x = x.view(-1, x.shape[-1])
    y2 = y.view(-1, y.shape[-1])
    g = _step(self, x.size(0))
    if g is None or y2.size(0) != x.size(0):
        rank = lora_b_stacked[0].size(-1)
        buffers = buffer or tuple(
            torch.zeros((x.size(0), rank), dtype=torch.float32, device=x.device)
            for _ in output_slices
        )
        add_shrink(self, buffers, x, lora_a_stacked, scale)
        add_expand(self, y2, buffers, lora_b_stacked, output_slices)
        return
    offset = 0
    for a, b, size in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
        fused_add(g, x, a, b, y2[:, offset : offset + size], scale)
        offset += size


def add_lora_embedding(
    self: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_b_stacked: torch.Tensor,
    add_inputs: bool = True,
    **kwargs: Any,
) -> None:
    add_expand(self, y, (x,), (lora_b_stacked,), (y.shape[-1],), add_inputs=add_inputs)


def add_logits(
    owner: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: torch.Tensor,
    lora_b_stacked: torch.Tensor,
    scale: float,
    indices: torch.Tensor,
) -> None:
    """``y[r] += scale * x[r] @ A[i[r]].T @ B[i[r]].T`` for the logits rows ``i`` names."""
    if indices.numel() == x.size(0) == y.size(0):
        fused_add(cached_grouping(owner, indices), x, lora_a_stacked, lora_b_stacked, y, scale)
        return
    rank = lora_b_stacked.size(-1)
    buffer = torch.zeros((x.size(0), rank), dtype=torch.float32, device=x.device)
    per_row(x, lora_a_stacked, indices, buffer, mode="shrink", scale=scale)
    per_row(buffer, lora_b_stacked, indices, y, mode="expand")
