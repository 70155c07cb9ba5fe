"""A child started with die_with_parent (a vLLM engine, a local-stack service) dies with its
parent, also when the parent is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.processes import engine_cpu_layout

REPO = Path(__file__).resolve().parents[2]

# Stands in for the server: starts a long-lived child the way the supervisor starts vLLM (own
# session, die_with_parent) and prints its pid.
PARENT = """
import subprocess, sys, time
from shared.processes import die_with_parent
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(120)"],
    start_new_session=True,
    preexec_fn=die_with_parent(),
)
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_engine_child_gets_sigterm_when_the_server_is_killed_9() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the engine outlived the server"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_without_the_guard_the_child_would_outlive_the_server() -> None:
    """The control: the same set-up without die_with_parent leaves the child running, so the test
    above can fail."""
    code = PARENT.replace("preexec_fn=die_with_parent(),", "")
    parent = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        time.sleep(1)
        assert _alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize(
    ("cores", "engines", "environ", "bind", "says"),
    [
        ({0, 1}, 1, {}, "0,1", "all 2 cores"),
        ({0, 1, 2, 3}, 1, {}, "0,1,2,3", "all 4 cores"),
        (set(range(16)), 1, {}, None, "all cores but one, of 16"),
        ({0, 1}, 2, {}, None, "all cores but one, of 2"),
        ({0, 1}, 1, {"VLLM_CPU_OMP_THREADS_BIND": "1"}, None, "set by the operator"),
    ],
)
def test_engine_cpu_layout_gives_a_small_machine_every_core(
    monkeypatch: pytest.MonkeyPatch,
    cores: set[int],
    engines: int,
    environ: dict[str, str],
    bind: str | None,
    says: str,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: cores)
    env, sentence = engine_cpu_layout(environ, engines)
    assert says in sentence
    if bind is None:
        assert env == {}
    else:
        assert env == {"VLLM_CPU_OMP_THREADS_BIND": bind, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
