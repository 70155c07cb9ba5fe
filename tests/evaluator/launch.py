"""Start our OpenAI-compatible server (``loraplex serve``) as a child process, for benchmarks,
slow tests and one-off parity checks. Test tooling: it lives under ``tests/`` so it never ships in
the ``services`` package; ``bench/`` imports it from here. It only runs the server's command and
talks HTTP to it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from shared.errors import SystemFailure


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(
    env: dict[str, str],
    port: int,
    log_path: Path,
    *,
    timeout_s: float = 300.0,
    cpus: set[int] | None = None,
    append_log: bool = False,
    stop_timeout_s: float = 40.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """``loraplex serve`` with ``env`` as its whole environment, listening on ``port``; yields the
    process once ``/ready`` answers 200.

    The server and its vLLM engines run in their own process group, which is terminated (then
    killed) on exit, so no engine outlives the block. ``cpus``: the server's CPU affinity, which
    the engines it starts inherit."""
    log = log_path.open("ab" if append_log else "wb")
    cmd = [sys.executable, "-c", "from services.cli import main; main()", "serve"]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemFailure(
                    f"the server exited with code {proc.returncode} during start-up; see {log.name}"
                )
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemFailure(
                    f"the server was not ready after {timeout_s:.0f}s; see {log.name}"
                )
            time.sleep(1.0)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


@contextmanager
def serve(
    data_dir: Path,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 300.0,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Run ``loraplex serve`` on a free port until the block exits; yields its base URL."""
    port = port or free_port()
    child_env = {
        **os.environ,
        "LORAPLEX_DATA_DIR": str(data_dir),
        "LORAPLEX_PORT": str(port),
        "LORAPLEX_HOST": "127.0.0.1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
        **(env or {}),
    }
    log = log_path or data_dir / f"server-{port}.log"
    with running(child_env, port, log, timeout_s=timeout_s):
        yield f"http://127.0.0.1:{port}"
