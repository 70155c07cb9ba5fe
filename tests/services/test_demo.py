"""The demo's options (``services/demo.py``), without running it: seed and precision from flags and
the environment."""

from __future__ import annotations

import pytest

from services.demo import options


def test_seed_and_precision_come_from_flags_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORAPLEX_DEMO_SEED", "11")
    monkeypatch.setenv("LORAPLEX_DEMO_PRECISION", "fp32")
    args = options([])
    assert (args.seed, args.precision, args.items) == (11, "fp32", 250)
    assert options(["--seed", "3", "--precision", "bf16"]).seed == 3
    monkeypatch.setenv("LORAPLEX_DEMO_PRECISION", "fp8")
    with pytest.raises(SystemExit):
        options([])
