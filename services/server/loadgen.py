"""Tools for the server benchmarks (``bench/*.py``): a streaming load generator, a server process,
and random LoRA adapters with the base model's real shapes (no training, no model load).

Kept small and dependency-free beyond what the server already uses (aiohttp, safetensors).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# -- adapters ----------------------------------------------------------------------------------
def random_adapter(base_dir: Path, out: Path, *, rank: int = 8, seed: int = 0) -> Path:
    """A PEFT LoRA folder on every linear layer of ``base_dir``, A uniform (as peft inits it),
    B normal (std 0.05) so the adapter visibly changes the output."""
    from safetensors.numpy import save_file

    from shared.servability import base_linear_shapes

    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module, shape in sorted(base_linear_shapes(base_dir).items()):
        if module.rsplit(".", 1)[-1] not in LINEAR:
            continue
        out_f, in_f = shape[0], shape[-1]
        bound = 1 / np.sqrt(in_f)
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = rng.uniform(-bound, bound, (rank, in_f)).astype(
            np.float32
        )
        tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.05, (out_f, rank)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": list(LINEAR),
        "bias": "none",
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": str(base_dir),
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return out


# -- server process ----------------------------------------------------------------------------
@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    admin_key: str
    log_path: Path

    def get(self, path: str) -> Any:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import urllib.request

        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body or {}).encode(),
            method=method,
            headers={
                "authorization": f"Bearer {self.admin_key}",
                "content-type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())

    @property
    def engine_url(self) -> str:
        return str(self.get("/v1/adapters")["data"][0]["url"])


@contextmanager
def server_process(
    data_dir: Path,
    *,
    port: int,
    env: dict[str, str] | None = None,
    ready_timeout: float = 600,
    cpus: set[int] | None = None,
) -> Iterator[ServerProcess]:
    """``loraplex serve`` in its own process group; stopped (with its engines) on exit.

    ``cpus``: CPU affinity of the server, inherited by the engines it starts."""
    import urllib.error
    import urllib.request

    admin_key = "bench-admin"
    full_env = dict(os.environ)
    full_env.update(
        {
            "LORAPLEX_DATA_DIR": str(data_dir),
            "LORAPLEX_PORT": str(port),
            "LORAPLEX_ADMIN_KEY": admin_key,
            "LORAPLEX_LOG_LEVEL": "WARNING",
        }
    )
    full_env.update(env or {})
    log_path = data_dir / "server.log"
    log = log_path.open("ab")
    code = "from services.server.cli import serve_app; serve_app()"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, admin_key, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(server.url + "/ready", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {ready_timeout}s; see {log_path}")
            time.sleep(1)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Move every thread of one process (not its children) to ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


# -- load --------------------------------------------------------------------------------------
@dataclass
class RequestResult:
    ok: bool
    status: int
    latency_s: float
    ttft_s: float | None
    tokens: int
    version: str = ""
    started: float = 0.0
    error: str = ""


@dataclass
class LoadResult:
    results: list[RequestResult] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]

    def summary(self) -> dict[str, Any]:
        ok = self.ok
        tokens = sum(r.tokens for r in ok)
        lat = [r.latency_s for r in ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        return {
            "requests": len(self.results),
            "failed": len(self.results) - len(ok),
            "tokens": tokens,
            "wall_s": round(self.wall_s, 3),
            "tokens_per_s": round(tokens / self.wall_s, 2) if self.wall_s else 0.0,
            "latency_median_s": round(statistics.median(lat), 4) if lat else None,
            "latency_p90_s": round(_quantile(lat, 0.9), 4) if lat else None,
            "ttft_median_s": round(statistics.median(ttft), 4) if ttft else None,
            "ttft_p90_s": round(_quantile(ttft, 0.9), 4) if ttft else None,
        }


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> RequestResult:
    started = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            version = resp.headers.get("x-loraplex-adapter-version", "")
            if resp.status != 200:
                await resp.read()
                return RequestResult(
                    False, resp.status, time.perf_counter() - started, None, 0, version, started
                )
            buffer = b""
            async for chunk in resp.content.iter_any():
                if ttft is None:
                    ttft = time.perf_counter() - started
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if event.startswith(b"data: {"):
                        data = json.loads(event[6:])
                        if "error" in data:
                            return RequestResult(
                                False,
                                200,
                                time.perf_counter() - started,
                                ttft,
                                tokens,
                                version,
                                started,
                                str(data["error"]),
                            )
                        usage = data.get("usage")
                        if usage and not data.get("choices"):
                            tokens = int(usage.get("completion_tokens", tokens))
                        elif data.get("choices") and not usage:
                            tokens += 1
            return RequestResult(
                True, 200, time.perf_counter() - started, ttft, tokens, version, started
            )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return RequestResult(
            False, 0, time.perf_counter() - started, ttft, tokens, "", started, repr(exc)
        )


def _client() -> aiohttp.ClientSession:
    """No connection limit (the concurrency is the caller's), no total timeout (long streams)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
    )


def _streamed(body: dict[str, Any]) -> dict[str, Any]:
    """Streamed, with usage, so token counts are the engine's."""
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


async def run_streams(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST every body (streamed) with ``concurrency`` requests in flight; usage is requested so
    token counts are the engine's."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(_streamed(body))
    result = LoadResult()
    async with _client() as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                result.results.append(await _one(session, url, body, headers or {}))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started
    return result


@dataclass
class PairedResult:
    """Requests of one same-batch round, keyed (pair, position) on each side."""

    sides: dict[str, dict[tuple[int, int], RequestResult]]


async def run_paired(
    urls: dict[str, str], bodies: Sequence[dict[str, Any]], *, concurrency: int, swap: bool
) -> PairedResult:
    """``concurrency`` streams on one engine at once, half to each of the two ``urls``: stream
    ``p`` of the first half and stream ``p`` of the second run the same bodies in the same order,
    so each request has a twin that shares its engine steps. ``swap`` flips which half goes where
    (alternate it between rounds)."""
    names = list(urls)
    if len(names) != 2 or concurrency % 2:
        raise ValueError("run_paired needs two urls and an even concurrency")
    half = concurrency // 2
    per_stream = max(1, len(bodies) // concurrency)
    sides: dict[str, dict[tuple[int, int], RequestResult]] = {n: {} for n in names}
    async with _client() as session:

        async def stream(k: int) -> None:
            name = names[(k >= half) != swap]
            pair = k % half
            for position, body in enumerate(bodies[pair::half][:per_stream]):
                sides[name][(pair, position)] = await _one(session, urls[name], _streamed(body), {})

        await asyncio.gather(*(stream(k) for k in range(concurrency)))
    return PairedResult(sides)


def completion_bodies(model: str | Sequence[str], n: int, max_tokens: int) -> list[dict[str, Any]]:
    """Fixed prompts and lengths (``ignore_eos``), so runs are comparable."""
    models = [model] if isinstance(model, str) else list(model)
    prompts = [
        "Write a short story about a lighthouse keeper.",
        "Explain how a bicycle works.",
        "List some facts about the moon.",
        "Describe a busy market in the morning.",
    ]
    return [
        {
            "model": models[i % len(models)],
            "prompt": prompts[i % len(prompts)],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        for i in range(n)
    ]


def machine() -> dict[str, Any]:
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1m_at_start": round(load[0], 2),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    out = Path(__file__).resolve().parents[2] / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def prepare_data_dir(data_dir: Path) -> Path:
    """A data dir holding the embedded base model (hard links to an already prepared copy when
    the test cache has one, else converted once)."""
    from shared.basemodel import prepare_embedded_model
    from shared.settings import EMBEDDED_BASE_MODEL, SharedSettings

    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / "models" / EMBEDDED_BASE_MODEL
    cache = Path(__file__).resolve().parents[2] / ".loraplex" / "test-cache" / "models"
    if not target.exists() and (cache / EMBEDDED_BASE_MODEL).is_dir():
        target.mkdir(parents=True)
        for item in (cache / EMBEDDED_BASE_MODEL).iterdir():
            os.link(item, target / item.name)
    return prepare_embedded_model(SharedSettings(data_dir=data_dir)).path


def register_adapters(
    data_dir: Path, names_and_seeds: Sequence[tuple[str, int]], rank: int = 8
) -> list[str]:
    """Random adapters imported (validated) into the data dir's registry; returns version ids."""
    from services.server.config import ServerSettings
    from services.server.importer import base_identity, import_adapter
    from services.server.validation import AdapterValidator
    from shared.artifacts import open_store
    from shared.registry.db import open_registry

    settings = ServerSettings(data_dir=data_dir)
    registry = open_registry(settings)
    store = open_store(settings)
    base = base_identity(settings, registry)
    validator = AdapterValidator(store, base, settings.max_lora_rank)
    vids = []
    try:
        for name, seed in names_and_seeds:
            assert base.path is not None
            folder = random_adapter(
                base.path, data_dir / "tmp-adapters" / f"{name}-{seed}", rank=rank, seed=seed
            )
            vids.append(import_adapter(registry, store, validator, folder, name)[0].id)
    finally:
        registry.dispose()
    return vids
