"""Run the three services on this machine as separate processes: for ``make demo`` and the
end-to-end tests.

Each service is the real command a deployment runs (``loraplex train api``, ``loraplex train
worker``, ``loraplex eval api``, ``loraplex eval worker``, ``loraplex serve``), with its own log file,
started with one shared environment (data directory, registry, ports) and stopped with SIGTERM
(SIGKILL after a grace period). Nothing here is a fake: the processes talk HTTP and share only the
registry and the artifact store.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType

import httpx

from shared.errors import SystemFailure
from shared.processes import die_with_parent, omp_bind, split_cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_setup(cpus: set[int] | None, on_parent_death: Callable[[], None] | None) -> None:
    """In the service's process before exec: its CPUs, and SIGTERM when the stack's process dies
    (so a killed test run or demo does not leave services and engines behind)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if on_parent_death is not None:
        on_parent_death()


@dataclass
class Service:
    name: str
    args: list[str]
    health_url: str | None
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    cpus: set[int] | None = None  # CPU affinity, inherited by its children (vLLM's engine)

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *self.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches vLLM's children too
            preexec_fn=partial(_child_setup, self.cpus, die_with_parent()),
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout_s: float) -> None:
        if self.health_url is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise SystemFailure(
                    f"{self.name} exited with {self.proc.returncode if self.proc else '?'} while "
                    f"starting; last log lines:\n{self.tail()}"
                )
            try:
                if httpx.get(self.health_url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemFailure(
            f"{self.name} was not healthy at {self.health_url} within {timeout_s:.0f} s; "
            f"last log lines:\n{self.tail()}"
        )

    def signal(self, sig: int) -> None:
        if self.alive() and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Children (vLLM engines) live in the same process group; make sure none is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def kill9(self, *, group: bool = False) -> None:
        """Kill the service as a crash would: its main process, or (``group``) every process it
        started, as when a container dies."""
        if self.proc is None or not self.alive():
            return
        if group:
            self.signal(signal.SIGKILL)
        else:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LocalStack:
    """Trainer (API + worker), evaluator (API + worker) and server, on free loopback ports."""

    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    # One key per role, fresh for each stack, handed to the services as LORAPLEX_KEYS: the release
    # flow (operator: every scope), the evaluator calling the server (infer, read) and the
    # application traffic (infer only), so the local stack runs with the same trust model as a
    # cluster. ``admin_key`` is the operator's.
    keys: dict[str, str] = field(
        default_factory=lambda: {
            role: f"sk-{role}-{secrets.token_urlsafe(24)}"
            for role in ("operator", "evaluator", "app")
        }
    )
    trainer_port: int = field(default_factory=free_port)
    evaluator_port: int = field(default_factory=free_port)
    server_port: int = field(default_factory=free_port)
    services: dict[str, Service] = field(default_factory=dict)
    # Give the vLLM engine its own cores and the workers (training, in-process evaluation) the
    # others, for callers whose training and serving overlap. On a small CPU machine two OpenMP
    # pools that share cores spin against each other and both run several times slower (training
    # next to a busy engine: about 5-10x on 2 cores). `make demo` runs its phases one after
    # another instead and lets each use every core (about 2.2x faster training on 2 cores).
    split_cpus: bool = False

    def cpu_plan(self) -> tuple[set[int], set[int]] | None:
        """(engine cores, worker cores) when ``split_cpus`` and there are at least two."""
        return split_cores() if self.split_cpus else None

    @property
    def admin_key(self) -> str:
        return self.keys["operator"]

    @property
    def app_key(self) -> str:
        return self.keys["app"]

    def key_config(self) -> list[dict[str, object]]:
        scopes = {"operator": ["admin"], "evaluator": ["infer", "read"], "app": ["infer"]}
        return [{"name": r, "key": k, "scopes": scopes[r]} for r, k in self.keys.items()]

    @property
    def trainer_url(self) -> str:
        return f"http://127.0.0.1:{self.trainer_port}"

    @property
    def evaluator_url(self) -> str:
        return f"http://127.0.0.1:{self.evaluator_port}"

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LORAPLEX_")}
        env.update(
            {
                "LORAPLEX_DATA_DIR": str(self.data_dir),
                "LORAPLEX_TRAINER_PORT": str(self.trainer_port),
                "LORAPLEX_EVALUATOR_PORT": str(self.evaluator_port),
                "LORAPLEX_PORT": str(self.server_port),
                "LORAPLEX_SERVER_URL": self.server_url,
                "LORAPLEX_KEYS": json.dumps(self.key_config()),
                "LORAPLEX_SERVER_API_KEY": self.keys["evaluator"],
                "LORAPLEX_CLIENT_KEY": self.admin_key,
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        split = self.cpu_plan()
        if split:
            engine_cpus, worker_cpus = split
            env["VLLM_CPU_OMP_THREADS_BIND"] = omp_bind(engine_cpus)
            env["LORAPLEX_TORCH_THREADS"] = str(len(worker_cpus))
            env["LORAPLEX_EVAL_THREADS"] = str(len(worker_cpus))
        env.update(self.extra_env)
        return env

    def _service(
        self, name: str, args: list[str], health: str | None, cpus: set[int] | None = None
    ) -> Service:
        service = Service(name, args, health, self.data_dir / "logs" / f"{name}.log", cpus=cpus)
        self.services[name] = service
        return service

    def start(
        self,
        *,
        server: bool = True,
        trainer: bool = True,
        evaluator: bool = True,
        wait_for_server: bool = True,
    ) -> LocalStack:
        """Start the services and wait until they answer. With ``wait_for_server=False`` the
        server's vLLM engine keeps loading in the background (``wait_ready("server")`` later), so
        training can start at once."""
        env = self.env()
        split = self.cpu_plan()
        engine_cpus, worker_cpus = split if split else (None, None)
        plan: list[Service] = []
        if server:
            plan.append(self._service("server", ["serve"], f"{self.server_url}/ready", engine_cpus))
        if trainer:
            plan.append(
                self._service("trainer-api", ["train", "api"], f"{self.trainer_url}/health")
            )
            plan.append(self._service("trainer-worker", ["train", "worker"], None, worker_cpus))
        if evaluator:
            plan.append(
                self._service("evaluator-api", ["eval", "api"], f"{self.evaluator_url}/health")
            )
            plan.append(self._service("evaluator-worker", ["eval", "worker"], None, worker_cpus))
        for service in plan:
            service.start(env)
        self.wait_ready(*(s.name for s in plan if wait_for_server or s.name != "server"))
        return self

    def wait_ready(self, *names: str) -> None:
        for name in names:
            # The server starts a vLLM engine (about 30-60 s on 2 idle CPU cores).
            self.services[name].wait_healthy(600 if name == "server" else 120)

    def restart(self, name: str) -> None:
        service = self.services[name]
        service.stop()
        service.start(self.env())
        self.wait_ready(name)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
