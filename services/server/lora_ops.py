"""Grouped LoRA kernels for vLLM's CPU backend: one batched matmul per layer for every adapter.

vLLM's torch ops copy one weight matrix per token (``weights[indices]``) before an ``einsum``;
the first version of our plugin looped over the adapters of the batch with a mask, a
``nonzero`` and an indexed write each, at every one of the ~420 LoRA op calls of a step. With
eight adapters mixed that was ~20,000 small torch calls per decode step, more than the base
model's own work (``bench/lora_profile.py`` measures both).

Here the token -> adapter layout of a step is computed once (:func:`group_rows`, cached on the
step's index tensor) and every op is a fixed handful of calls whatever the number of adapters:
the rows are gathered into a padded ``(slots, length, features)`` block, sorted by adapter, and
multiplied with one ``torch.bmm`` against the present adapters' weights, repacked once per
adapter load (:func:`packed`: float32, contiguous, cut to the rank in use); the result goes back
to row order with one ``index_select`` and a dense add (``index_add_`` into a column slice of the
output is ~5x slower on CPU). ``slots`` spans only the adapters present (lowest to highest slot)
and ``length`` is the most rows any of them has, so the padding never costs more than
multiplying every row by every present adapter, and nothing when the rows are spread evenly (the
mixed decode batch) or one adapter has them all. Rows with slot ``-1`` (no adapter) get no delta.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

_CACHE_ATTR = "_loraplex_groups"
_CACHE_SIZE = 4
_PACK_ATTR = "_loraplex_packed"
_T = TypeVar("_T")


COMPUTE = torch.float32
"""LoRA math runs in float32 on repacked weights: on CPU, the tiny batched matmuls of a LoRA
(rank 8-16) are markedly slower in bfloat16 than in float32 (``bench/lora_profile.py``), and the
float32 shrink result is exactly what vLLM's float32 intermediate buffer holds."""


@dataclass(frozen=True)
class Grouping:
    """Where each row of a step sits in the padded ``(slots, length)`` block of its adapter."""

    rows_total: int
    lo: int  # first slot present; padded block s holds slot lo + s
    slots: int  # 0 when no row has an adapter
    length: int
    gather: torch.Tensor  # (slots * length,) source row of each padded position (pads -> 0)
    row_pos: torch.Tensor  # (rows_total,) padded position of each row (0 for rows without one)
    mask: torch.Tensor | None  # (rows_total, 1) 1.0 where the row has an adapter; None: all do
    identity: bool  # padded block == the rows as they are: no gather or scatter needed

    @property
    def empty(self) -> bool:
        return self.slots == 0


def group_rows(indices: torch.Tensor) -> Grouping:
    """The padded layout of rows ``indices`` (one LoRA slot per row, ``-1`` = none)."""
    idx = indices.reshape(-1).to(torch.long)
    n = idx.numel()
    has = idx >= 0
    rows = has.nonzero().squeeze(1)
    m = rows.numel()
    if m == 0:
        none = torch.zeros(n, dtype=torch.long, device=idx.device)
        return Grouping(n, 0, 0, 0, none[:0], none, None, False)
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
    row_pos = torch.zeros(n, dtype=torch.long, device=idx.device)
    row_pos[rows] = pos
    mask = None if m == n else has.to(COMPUTE).unsqueeze(1)
    identity = m == n and slots * length == n and bool(torch.equal(pos, rows))
    return Grouping(n, lo, slots, length, gather, row_pos, mask, identity)


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


def _held(owner: torch.Tensor, tag: str, key: object, build: Callable[[], _T]) -> _T:
    """``build()``, kept on ``owner`` under ``tag`` until ``key`` changes (the versions of the
    weights it was built from: vLLM bumps them when it loads or evicts an adapter)."""
    held = getattr(owner, tag, None)
    if held is not None and held[0] == key:
        found: _T = held[1]
        return found
    value = build()
    setattr(owner, tag, (key, value))
    return value


def _versions(stacked: tuple[torch.Tensor, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((id(t), t._version) for t in stacked)


def packed(stacked: torch.Tensor, *, expand: bool) -> torch.Tensor:
    """vLLM's stacked weights ``(max_loras, 1, out, in)`` as float32 ``(max_loras, in, out)``,
    contiguous, cut to the rank the loaded adapters use (``in`` for expand, ``out`` for shrink:
    vLLM pads every adapter to max_lora_rank with zeros, and multiplying zeros is half the work
    of a rank-8 adapter under the default rank 16). Cached on the tensor until vLLM writes to it
    (loading or evicting an adapter bumps its version)."""

    def build() -> torch.Tensor:
        w = stacked.squeeze(1) if stacked.dim() == 4 else stacked
        rank_dim = 2 if expand else 1
        used = (w != 0).any(dim=3 - rank_dim).any(dim=0).nonzero()
        rank = int(used.max()) + 1 if used.numel() else 0
        cut = w[:, :, :rank] if expand else w[:, :rank, :]
        return cut.transpose(1, 2).to(COMPUTE).contiguous()

    return _held(stacked, _PACK_ATTR, stacked._version, build)


def packed_shrink(stacked: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
    """The A weights of every slice of a layer side by side, ``(max_loras, in, slices * rank)``
    with one ``rank`` (the largest any slice uses), so a merged layer (qkv, gate_up) shrinks with
    one matmul. Cached on the first tensor until vLLM writes to any of them."""

    def build() -> tuple[torch.Tensor, int]:
        parts = [packed(t, expand=False) for t in stacked]
        rank = max(p.size(-1) for p in parts)
        width = stacked[0].size(-2)
        cat = torch.cat([torch.nn.functional.pad(p, (0, rank - p.size(-1))) for p in parts], -1)
        return cat.contiguous(), min(rank, width)

    return _held(stacked[0], _PACK_ATTR + "_cat", _versions(stacked), build)


def packed_expand(stacked: tuple[torch.Tensor, ...], rank: int) -> torch.Tensor:
    """The B weights of every slice of a layer as one block-diagonal float32 matrix per slot,
    ``(max_loras, slices * rank, sum(widths))``: block ``i`` maps slice ``i``'s ``rank`` columns
    of :func:`packed_shrink`'s output to its output columns, so one matmul expands every slice
    (the zero blocks cost a few percent of the expand's multiply-adds, a merged layer's extra
    calls cost more). Cached on the first tensor until vLLM writes to any of them."""

    def build() -> torch.Tensor:
        weights = [t.squeeze(1) if t.dim() == 4 else t for t in stacked]  # (max_loras, out, r)
        widths = [w.size(1) for w in weights]
        diag = torch.zeros(
            (weights[0].size(0), len(weights) * rank, sum(widths)),
            dtype=COMPUTE,
            device=weights[0].device,
        )
        offset = 0
        for i, (w, width) in enumerate(zip(weights, widths, strict=True)):
            used = min(rank, w.size(-1))
            block = w[..., :used].transpose(1, 2)
            diag[:, i * rank : i * rank + used, offset : offset + width] = block
            offset += width
        return diag

    return _held(stacked[0], _PACK_ATTR + "_diag", (_versions(stacked), rank), build)


def padded(g: Grouping, rows: torch.Tensor) -> torch.Tensor:
    """``(slots, length, features)``: the rows in adapter order, in the compute dtype."""
    block = rows if g.identity else rows.index_select(0, g.gather)
    return block.to(COMPUTE).view(g.slots, g.length, rows.size(-1))


def _to_rows(g: Grouping, flat: torch.Tensor) -> torch.Tensor:
    """Padded rows ``(slots * length, k)`` back in row order, zero for rows without adapter."""
    if g.identity:
        return flat
    out = flat.index_select(0, g.row_pos)
    if g.mask is not None:
        out.mul_(g.mask)
    return out


def shrink_into(
    g: Grouping, x_padded: torch.Tensor, a_stacked: torch.Tensor, out: torch.Tensor, scale: float
) -> None:
    """``out[r, :rank] = scale * x[r] @ A[slot(r)].T`` (zeros for rows without an adapter), from
    ``x_padded`` = :func:`padded` of the inputs."""
    a = packed(a_stacked, expand=False)
    width = a_stacked.size(-2)
    used = a.size(-1)
    if used < width:
        out[:, used:width].zero_()
    if used == 0:
        return
    h = torch.bmm(x_padded, a[g.lo : g.lo + g.slots]).view(-1, used)
    if scale != 1.0:
        h = h * scale
    out[:, :used].copy_(_to_rows(g, h))


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
    b = packed(b_stacked, expand=True)
    common = min(b.size(-1), out.size(1))
    target = out[:, :common]
    used = min(b.size(1), h_padded.size(-1))
    if used == 0 or g.empty:
        if not add:
            target.zero_()
        return
    y = torch.bmm(h_padded[..., :used], b[g.lo : g.lo + g.slots, :used])
    rows = _to_rows(g, y.view(-1, y.size(-1))[:, :common])
    if add:
        target.add_(rows)
    else:
        target.copy_(rows)


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
    a = packed(a_stacked, expand=False)
    if a.size(-1) == 0:
        return  # e.g. the logits layer of adapters that do not train lm_head
    h = torch.bmm(padded(g, x), a[g.lo : g.lo + g.slots])
    if scale != 1.0:
        h = h * scale
    expand_add(g, h, b_stacked, out)


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
    if g.empty:
        if mode == "shrink":
            output[:, : weights.size(-2)].zero_()
        elif not add:
            output.zero_()
        return
    if mode == "shrink":
        shrink_into(g, padded(g, inputs), weights, output, scale)
    else:
        expand_add(g, padded(g, inputs), weights, output, add=add)


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
    a_cat, rank = packed_shrink(lora_a_stacked)
    slices = len(lora_a_stacked)
    for i in range(slices):
        if rank < y[i].size(-1):
            y[i][:, rank:].zero_()  # vLLM's buffers come zeroed; stay exact if one does not
    if rank == 0:
        return
    h = torch.bmm(padded(g, x), a_cat[g.lo : g.lo + g.slots])
    if scale != 1.0:
        h = h * scale
    rows = _to_rows(g, h.view(-1, slices * rank)).view(-1, slices, rank)
    if isinstance(y, torch.Tensor):
        y[..., :rank].copy_(rows.transpose(0, 1))
    else:
        for i in range(slices):
            y[i][:, :rank].copy_(rows[:, i])


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
        if not add_inputs:
            y[:, offset : offset + sum(output_slices)].zero_()
        return
    packs = [packed(b, expand=True) for b in lora_b_stacked]
    rank = min(max(p.size(1) for p in packs), x[0].size(-1))
    widths = [p.size(-1) for p in packs]
    if rank == 0:
        if not add_inputs:
            y[:, offset : offset + sum(output_slices)].zero_()
        return
    if not isinstance(x, torch.Tensor) or list(output_slices) != widths:
        for i, b in enumerate(lora_b_stacked):
            expand_add(
                g, padded(g, x[i]), b, y[:, offset : offset + output_slices[i]], add=add_inputs
            )
            offset += output_slices[i]
        return
    # One gather for every slice: (slices, rows, rank) -> (slices, slots, length, rank).
    h = x[..., :rank]
    h = h.contiguous() if g.identity else h.index_select(1, g.gather)
    h = h.to(COMPUTE).view(x.size(0), g.slots, g.length, rank)
    parts = [
        torch.bmm(h[i][..., : p.size(1)], p[g.lo : g.lo + g.slots]) for i, p in enumerate(packs)
    ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
    rows = _to_rows(g, out.view(-1, out.size(-1)))
    target = y[:, offset : offset + rows.size(1)]
    if add_inputs:
        target.add_(rows)
    else:
        target.copy_(rows)


def _linear_packs(
    a: tuple[torch.Tensor, ...],
    b: tuple[torch.Tensor, ...],
    output_slices: tuple[int, ...],
    out_width: int,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`packed_shrink` and :func:`packed_expand` of a layer, or None when its output
    slices are not its B widths side by side within the output."""
    a_cat, rank = packed_shrink(a)
    b_diag = packed_expand(b, rank)
    width = b_diag.size(-1)
    if width != sum(output_slices) or width > out_width:
        return None
    return a_cat, b_diag


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
    """The call every LoRA linear layer makes: two batched matmuls and one add for all its
    slices (the A weights side by side, the B weights block-diagonal, :func:`packed_expand`),
    so a merged qkv costs what a plain o_proj does in calls; the per-call overhead, not the
    multiply-adds, was most of the LoRA time of a decode step (``bench/lora_profile.py``)."""
    x = x.view(-1, x.shape[-1])
    y2 = y.view(-1, y.shape[-1])
    g = _step(self, x.size(0))
    if g is not None and g.empty:
        return
    packs = None
    if g is not None and y2.size(0) == x.size(0):
        packs = _linear_packs(lora_a_stacked, lora_b_stacked, output_slices, y2.size(1))
    if g is None or packs is None:
        # Rows not one per token, or slices that are not the B widths side by side: the
        # general ops apply vLLM's broadcasting rules (or say what does not fit).
        width = lora_b_stacked[0].size(-1)
        buffers = buffer or tuple(
            torch.zeros((x.size(0), width), dtype=torch.float32, device=x.device)
            for _ in output_slices
        )
        add_shrink(self, buffers, x, lora_a_stacked, scale)
        add_expand(self, y2, buffers, lora_b_stacked, output_slices)
        return
    a_cat, b_diag = packs
    total = b_diag.size(-1)
    window = slice(g.lo, g.lo + g.slots)
    h = torch.bmm(padded(g, x), a_cat[window])
    if scale != 1.0:
        h.mul_(scale)
    delta = torch.bmm(h, b_diag[window])
    rows = _to_rows(g, delta.view(-1, total))
    (y2 if total == y2.size(1) else y2[:, :total]).add_(rows)


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
