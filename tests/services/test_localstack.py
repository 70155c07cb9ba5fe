"""The local stack's CPU split: the vLLM engine and the workers get disjoint cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.localstack import LocalStack

CORES = sorted(os.sched_getaffinity(0))


def test_no_split_unless_asked(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    assert stack.cpu_plan() is None
    assert "VLLM_CPU_OMP_THREADS_BIND" not in stack.env()


@pytest.mark.skipif(len(CORES) < 2, reason="needs at least two CPU cores")
def test_split_gives_engine_and_workers_disjoint_cores(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, split_cpus=True)
    plan = stack.cpu_plan()
    assert plan is not None
    engine, workers = plan
    assert engine and workers and not engine & workers
    assert engine | workers == set(CORES)
    env = stack.env()
    assert {int(c) for c in env["VLLM_CPU_OMP_THREADS_BIND"].split(",")} == engine
    assert env["LORAPLEX_TORCH_THREADS"] == env["LORAPLEX_EVAL_THREADS"] == str(len(workers))
    # Explicit settings win over the split's.
    stack.extra_env["LORAPLEX_TORCH_THREADS"] = "1"
    assert stack.env()["LORAPLEX_TORCH_THREADS"] == "1"
