"""Child processes: which CPUs they run on, and that they do not outlive their parent."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when this process dies,
    also by SIGKILL (Linux; None elsewhere).

    A child in its own process group (a vLLM engine, a service started by the local stack) would
    otherwise outlive a parent killed by the OOM killer or ``kill -9``: an engine keeps its port and
    gigabytes of memory while a restarted server starts a second one. SIGTERM lets the child stop
    its own children (vLLM's API server stops its engine core). The signal is tied to the thread
    that starts the child: start children from a thread that lives as long as they should.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


_PR_SET_PDEATHSIG = 1


def split_cores() -> tuple[set[int], set[int]] | None:
    """This process's CPUs split in two: (last half, first half), for a CPU vLLM engine and for
    everything else; None with fewer than two.

    On a small CPU machine two OpenMP pools (an engine, training) or an engine and busy Python
    processes that share cores spin against each other and all run several times slower.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    half = len(cores) // 2
    return set(cores[half:]), set(cores[:half])


def omp_bind(cpus: set[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for a CPU engine on ``cpus``."""
    return ",".join(map(str, sorted(cpus)))


# vLLM's CPU backend binds its model threads to all cores but one per engine, which it keeps for
# its scheduler process; that process busy-waits on the model's output. On a small machine the
# reserved core is a large share of the compute: on 2 cores generation runs on 1 thread.
SMALL_CPU_CORES = 4


def engine_cpu_layout(environ: dict[str, str], engines: int) -> tuple[dict[str, str], str]:
    """Environment for a CPU vLLM engine's thread binding, and a sentence saying what it does.

    On a machine with at most ``SMALL_CPU_CORES`` cores and one engine, the model's threads get
    every core (the scheduler shares them; it yields while it waits): 1.4x the generation
    throughput of vLLM's layout on 2 cores (bench/engine_layout.py). An operator's own
    ``VLLM_CPU_OMP_THREADS_BIND`` always wins.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in environ:
        return (
            {},
            f"VLLM_CPU_OMP_THREADS_BIND={environ['VLLM_CPU_OMP_THREADS_BIND']} (set by the operator)",
        )
    cores = set(os.sched_getaffinity(0))
    if engines != 1 or len(cores) > SMALL_CPU_CORES:
        return {}, f"vLLM's layout: model threads on all cores but one, of {len(cores)}"
    return (
        {"VLLM_CPU_OMP_THREADS_BIND": omp_bind(cores), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
        f"model threads on all {len(cores)} cores ({omp_bind(cores)}); vLLM would keep one of "
        "them for its scheduler",
    )
