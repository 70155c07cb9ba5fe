"""The CPU LoRA plugin's replacement ops against vLLM's own, and its slice bookkeeping."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

from services.server import vllm_plugin as plugin  # noqa: E402


@pytest.fixture
def weights() -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(3, 1, 8, 32, generator=gen),
        "b": torch.randn(3, 1, 48, 8, generator=gen),
        "x": torch.randn(7, 32, generator=gen),
        "h": torch.randn(7, 8, generator=gen),
        "idx": torch.tensor([0, 1, 1, 2, 0, 2, 1]),
    }


def test_ops_match_vllm_for_valid_indices(weights: dict[str, Any]) -> None:
    w = weights
    y1, y2 = torch.zeros(7, 8), torch.zeros(7, 8)
    lora_ops.bgmv_shrink(w["x"], w["a"], y1, w["idx"], 0.5)
    plugin.bgmv_shrink(w["x"], w["a"], y2, w["idx"], 0.5)
    assert torch.allclose(y1, y2, atol=1e-5)
    o1 = torch.randn(7, 48)
    o2 = o1.clone()
    lora_ops.bgmv_expand(w["h"], w["b"], o1, w["idx"], True)
    plugin.bgmv_expand(w["h"], w["b"], o2, w["idx"], True)
    assert torch.allclose(o1, o2, atol=1e-5)
    o1 = torch.randn(7, 100)
    o2 = o1.clone()
    lora_ops.bgmv_expand_slice(w["h"], w["b"], o1, w["idx"], 20, 48, True)
    plugin.bgmv_expand_slice(w["h"], w["b"], o2, w["idx"], 20, 48, True)
    assert torch.allclose(o1, o2, atol=1e-5)
    # A single index broadcasts over every row, as in vLLM.
    y1, y2 = torch.zeros(7, 8), torch.zeros(7, 8)
    lora_ops.bgmv_shrink(w["x"], w["a"], y1, torch.tensor([2]), 1.0)
    plugin.bgmv_shrink(w["x"], w["a"], y2, torch.tensor([2]), 1.0)
    assert torch.allclose(y1, y2, atol=1e-5)


def test_rows_without_an_adapter_get_no_delta(weights: dict[str, Any]) -> None:
    w = weights
    idx = torch.tensor([-1, 1, -1, 2, 0, -1, 1])
    out = torch.zeros(7, 48)
    plugin.bgmv_expand(w["h"], w["b"], out, idx, True)
    assert out[[0, 2, 5]].abs().sum() == 0
    assert out[[1, 3, 4, 6]].abs().sum() > 0
    # vLLM's own op gives those rows the last slot's adapter (the bug this fixes).
    bad = torch.zeros(7, 48)
    lora_ops.bgmv_expand(w["h"], w["b"], bad, idx, True)
    assert bad[0].abs().sum() > 0


def test_mismatched_rows_raise_instead_of_guessing(weights: dict[str, Any]) -> None:
    w = weights
    with pytest.raises(ValueError, match="indices"):
        plugin.bgmv_shrink(w["x"], w["a"], torch.zeros(7, 8), torch.tensor([0, 1, 2]), 1.0)


def test_row_offset_of_views() -> None:
    whole = torch.randn(10, 4)
    assert plugin.row_offset(whole[3:7], whole) == 3
    assert plugin.row_offset(whole[3:7], whole[2:]) == 1
    assert plugin.row_offset(torch.randn(3, 4), whole) is None
    assert plugin.row_offset(whole[8:], whole[:9]) is None


class _Wrapper:
    def __init__(self, sampler: list[int], tokens: list[int]) -> None:
        self.sampler_indices = torch.tensor(sampler)
        self.token_lora_indices = torch.tensor(tokens)


def test_logits_indices_use_the_prompt_slice_when_set() -> None:
    wrapper = _Wrapper(sampler=[0, 1], tokens=[0, 0, 0, 1, 1, 1, 1])
    assert plugin.logits_indices(wrapper, 2).tolist() == [0, 1]
    token = plugin._PROMPT_ROWS.set((3, 4))
    try:
        assert plugin.logits_indices(wrapper, 4).tolist() == [1, 1, 1, 1]
    finally:
        plugin._PROMPT_ROWS.reset(token)
    with pytest.raises(ValueError, match="which LoRA adapter"):
        plugin.logits_indices(wrapper, 4)
