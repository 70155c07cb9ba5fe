"""The grouped CPU LoRA kernels against a plain per-token reference computed with torch."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
punica_cpu = pytest.importorskip("vllm.lora.punica_wrapper.punica_cpu")

from vllm.lora.layers import LoRAMapping  # noqa: E402

from services.server import lora_ops  # noqa: E402

MAX_LORAS, MAX_RANK, IN = 6, 16, 24
SLICES = (20, 8, 8)  # a merged layer like qkv: three outputs side by side
RANKS = (4, 8, 16, 8, 1, 12)  # per slot: adapters of several ranks, zero-padded like vLLM's


class Grouped(punica_cpu.PunicaWrapperCPU):  # type: ignore[misc,name-defined]
    add_shrink = lora_ops.add_shrink
    add_expand = lora_ops.add_expand
    add_lora_linear = lora_ops.add_lora_linear


def wrapper(slots: list[int]) -> Any:
    w = Grouped(max_num_batched_tokens=64, max_batches=64, device="cpu")
    set_slots(w, slots)
    return w


def set_slots(w: Any, slots: list[int]) -> None:
    ids = tuple(s + 1 for s in slots)  # LoRA id s + 1 lives in slot s; id 0 is "no adapter"
    w.update_metadata(
        LoRAMapping(ids, ids, is_prefill=False), [i + 1 for i in range(MAX_LORAS)], MAX_LORAS, 0
    )


def stacked(dtype: Any = torch.float32, seed: int = 0) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    gen = torch.Generator().manual_seed(seed)
    a = tuple(torch.zeros(MAX_LORAS, 1, MAX_RANK, IN, dtype=dtype) for _ in SLICES)
    b = tuple(torch.zeros(MAX_LORAS, 1, out, MAX_RANK, dtype=dtype) for out in SLICES)
    for slot, rank in enumerate(RANKS):
        for i, out in enumerate(SLICES):
            a[i][slot, 0, :rank] = torch.randn(rank, IN, generator=gen).to(dtype)
            b[i][slot, 0, :, :rank] = torch.randn(out, rank, generator=gen).to(dtype)
    return a, b


def reference(y: Any, x: Any, a: Any, b: Any, slots: list[int]) -> Any:
    """Token by token: y[t] + x[t] @ A[s].T @ B[s].T for the slot s of token t (none if -1)."""
    out = y.clone().double()
    for t, slot in enumerate(slots):
        if slot < 0:
            continue
        offset = 0
        for ai, bi, width in zip(a, b, SLICES, strict=True):
            delta = x[t].double() @ ai[slot, 0].double().T @ bi[slot, 0].double().T
            out[t, offset : offset + width] += delta
            offset += width
    return out


def layer_call(w: Any, y: Any, x: Any, a: Any, b: Any) -> Any:
    """What vLLM's merged column-parallel layer does: zeroed buffer, shrink, expand."""
    buffer = torch.zeros(len(SLICES), x.size(0), MAX_RANK)
    w.add_shrink(buffer, x, a, 1.0)
    w.add_expand(y, buffer, b, SLICES, offset_start=0)
    return y


MIXED = [3, -1, 0, 2, 2, 5, -1, 1, 3, 0, 4, 2, 5, 5, 1, -1, 0]


@pytest.mark.parametrize(
    "slots",
    [MIXED, [2] * 9, [-1] * 5, [4, 4, 1, 1, 1, 1, 1, 0], [5, 3, 1]],
    ids=["mixed", "one", "none", "skewed", "one-each"],
)
@pytest.mark.parametrize("fused", [False, True], ids=["shrink+expand", "add_lora_linear"])
def test_grouped_ops_match_a_per_token_reference(slots: list[int], fused: bool) -> None:
    a, b = stacked()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(len(slots), IN, generator=gen)
    y0 = torch.randn(len(slots), sum(SLICES), generator=gen)
    w = wrapper(slots)
    y = y0.clone()
    if fused:
        w.add_lora_linear(y, x, a, b, 1.0, SLICES)
    else:
        layer_call(w, y, x, a, b)
    want = reference(y0, x, a, b, slots)
    assert torch.allclose(y.double(), want, atol=1e-3), (y.double() - want).abs().max()
    if len(set(slots)) > 1 and slots[0] != slots[1]:
        # Control: the reference with two tokens' adapters swapped must disagree.
        swapped = [slots[1], slots[0], *slots[2:]]
        assert not torch.allclose(y.double(), reference(y0, x, a, b, swapped), atol=1e-3)


def test_bf16_weights_agree_within_bf16_rounding() -> None:
    a, b = stacked(torch.bfloat16)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(len(MIXED), IN, generator=gen).to(torch.bfloat16)
    y0 = torch.zeros(len(MIXED), sum(SLICES), dtype=torch.bfloat16)
    y = layer_call(wrapper(MIXED), y0.clone(), x, a, b)
    want = reference(y0, x, a, b, MIXED)
    # bf16 keeps ~3 significant digits; deltas here are O(10), so 2% of the largest is generous
    # for rounding and far below a wrong adapter (whose deltas are as large as the right one's).
    assert (y.double() - want).abs().max() < 0.02 * want.abs().max()


@pytest.mark.parametrize("fused", [False, True], ids=["shrink+expand", "add_lora_linear"])
def test_an_adapter_loaded_into_a_slot_is_used_on_the_next_step(fused: bool) -> None:
    """The repacked weights are cached; writing a slot (vLLM's set_lora) must invalidate them."""
    a, b = stacked()
    slots = [1, 1, 0, 1]
    x = torch.randn(len(slots), IN)
    y0 = torch.zeros(len(slots), sum(SLICES))
    w = wrapper(slots)

    def call(y: Any) -> Any:
        if fused:
            w.add_lora_linear(y, x, a, b, 1.0, SLICES)
            return y
        return layer_call(w, y, x, a, b)

    call(y0.clone())
    a2, b2 = stacked(seed=7)
    for i in range(len(SLICES)):
        a[i][1].copy_(a2[i][1])
        b[i][1].copy_(b2[i][1])
    got = call(y0.clone())
    assert torch.allclose(got.double(), reference(y0, x, a, b, slots), atol=1e-3)


def test_the_next_step_gets_its_own_layout() -> None:
    """The token layout is cached per step; vLLM rewrites the indices in place each step."""
    a, b = stacked()
    w = wrapper([0, 1, 2, 3])
    x = torch.randn(4, IN)
    y0 = torch.zeros(4, sum(SLICES))
    layer_call(w, y0.clone(), x, a, b)
    set_slots(w, [3, 2, -1, 0])
    got = layer_call(w, y0.clone(), x, a, b)
    assert torch.allclose(got.double(), reference(y0, x, a, b, [3, 2, -1, 0]), atol=1e-3)


def test_group_rows_layout() -> None:
    idx = torch.tensor(MIXED)
    g = lora_ops.group_rows(idx)
    assert (g.lo, g.slots, g.length) == (0, 6, 3)
    for row, slot in enumerate(MIXED):
        if slot >= 0:
            pos = int(g.row_pos[row])
            assert int(g.gather[pos]) == row
            assert pos // g.length + g.lo == slot
    assert g.mask is not None and g.mask.squeeze(1).tolist() == [float(s >= 0) for s in MIXED]
    assert lora_ops.group_rows(torch.tensor([2, 2, 2])).identity
    assert not lora_ops.group_rows(torch.tensor([2, 3, 2])).identity
    assert lora_ops.group_rows(torch.tensor([-1, -1])).empty


def test_packing_cuts_to_the_rank_in_use() -> None:
    a, _ = stacked()
    assert lora_ops.packed(a[0], expand=False).shape == (MAX_LORAS, IN, max(RANKS))
    half = a[0].clone()
    half[:, :, 8:] = 0
    assert lora_ops.packed(half, expand=False).shape == (MAX_LORAS, IN, 8)
    assert lora_ops.packed(torch.zeros(2, 1, 16, IN), expand=False).shape[-1] == 0


def test_slices_of_one_layer_may_use_different_ranks() -> None:
    """The block-diagonal B pack puts each slice's B under its own rank columns of the shrink:
    slices that use fewer ranks than the widest still get exactly their own delta."""
    a, b = stacked()
    a[1][:, :, 3:] = 0  # slice 1 (a kv projection, say) uses rank 3 in every slot
    b[1][..., 3:] = 0
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(len(MIXED), IN, generator=gen)
    y0 = torch.randn(len(MIXED), sum(SLICES), generator=gen)
    y = y0.clone()
    wrapper(MIXED).add_lora_linear(y, x, a, b, 1.0, SLICES)
    want = reference(y0, x, a, b, MIXED)
    assert torch.allclose(y.double(), want, atol=1e-3), (y.double() - want).abs().max()
    # Control: the two equally wide slices' B weights swapped must disagree.
    y_bad = y0.clone()
    wrapper(MIXED).add_lora_linear(y_bad, x, a, (b[0], b[2], b[1]), 1.0, SLICES)
    assert not torch.allclose(y_bad.double(), want, atol=1e-3)
