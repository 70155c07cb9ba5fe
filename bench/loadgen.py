"""Tools for the server benchmarks (``bench/*.py``): a streaming load generator, a server process,
and random LoRA adapters with the base model's real shapes (no training, no model load).

Test tooling, so it lives here and not in the shipped ``services`` package; the bench scripts put
the repository root on ``sys.path`` and import it as ``bench.loadgen``, as the tests do.

Kept small and dependency-free beyond what the server already uses (aiohttp, safetensors).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
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
# Once any key is configured every route but /health and /ready needs one: the server under
# benchmark gets an admin key (/admin) and an inference key (/v1, /metrics), and every call sends
# the one its route needs.
ADMIN_KEY = "bench-admin-key-0123456789"
INFER_KEY = "bench-infer-key-0123456789"
# Keys the benchmark's server process must not inherit from the caller's environment.
_KEY_VARIABLES = ("LORAPLEX_KEYS", "LORAPLEX_KEYS_FILE", "LORAPLEX_ADMIN_KEY", "LORAPLEX_API_KEYS")


def bench_keys(admin_key: str = ADMIN_KEY, infer_key: str = INFER_KEY) -> str:
    """``LORAPLEX_KEYS`` for a benchmark's server: one admin key, one inference key (also
    ``read`` and ``metrics``) whose concurrency cap no benchmark reaches."""
    return json.dumps(
        [
            {"name": "bench-admin", "key": admin_key, "scopes": ["admin"]},
            {
                "name": "bench-infer",
                "key": infer_key,
                "scopes": ["infer", "read", "metrics"],
                "max_concurrent": 4096,
            },
        ]
    )


def bearer_headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    admin_key: str
    log_path: Path
    infer_key: str = INFER_KEY

    @property
    def admin_headers(self) -> dict[str, str]:
        return bearer_headers(self.admin_key)

    @property
    def infer_headers(self) -> dict[str, str]:
        """For /v1 (and /metrics): the inference key."""
        return bearer_headers(self.infer_key)

    def get(self, path: str) -> Any:
        """GET with the inference key (``infer``, ``read`` and ``metrics`` scopes)."""
        import urllib.request

        req = urllib.request.Request(self.url + path, headers=self.infer_headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
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
    """``loraplex serve`` in its own process group (``tests/evaluator/launch.py``); stopped
    (with its engines) on exit.

    ``cpus``: CPU affinity of the server, inherited by the engines it starts."""
    from tests.evaluator.launch import running

    full_env = {k: v for k, v in os.environ.items() if k not in _KEY_VARIABLES}
    full_env.update(
        {
            "LORAPLEX_DATA_DIR": str(data_dir),
            "LORAPLEX_PORT": str(port),
            "LORAPLEX_KEYS": bench_keys(),
            "LORAPLEX_LOG_LEVEL": "WARNING",
        }
    )
    full_env.update(env or {})
    log_path = data_dir / "server.log"
    with running(
        full_env,
        port,
        log_path,
        timeout_s=ready_timeout,
        cpus=cpus,
        append_log=True,
        stop_timeout_s=60,
    ) as process:
        yield ServerProcess(f"http://127.0.0.1:{port}", process, ADMIN_KEY, log_path, INFER_KEY)


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
    answered: float = 0.0
    """``time.perf_counter()`` when the response headers arrived (0: no response)."""
    text: str = ""
    """The generated text (completions' ``text``, chat's ``delta.content``), streamed answers."""


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
    answered = 0.0
    ttft = None
    tokens = 0
    version = ""
    text: list[str] = []

    def result(ok: bool, status: int, error: str = "") -> RequestResult:
        return RequestResult(
            ok,
            status,
            time.perf_counter() - started,
            ttft,
            tokens,
            version,
            started,
            error,
            answered,
            "".join(text),
        )

    try:
        async with session.post(url, json=body, headers=headers) as resp:
            answered = time.perf_counter()
            version = resp.headers.get("x-loraplex-adapter-version", "")
            if resp.status != 200:
                return result(
                    False, resp.status, (await resp.read())[:300].decode(errors="replace")
                )
            buffer = b""
            done = False
            async for chunk in resp.content.iter_any():
                if ttft is None:
                    ttft = time.perf_counter() - started
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if event.startswith(b"data: [DONE]"):
                        done = True
                    elif event.startswith(b"data: {"):
                        data = json.loads(event[6:])
                        if "error" in data:
                            return result(False, 200, str(data["error"]))
                        usage = data.get("usage")
                        choices = data.get("choices")
                        if usage and not choices:
                            tokens = int(usage.get("completion_tokens", tokens))
                        elif choices and not usage:
                            tokens += 1
                        for choice in choices or ():
                            piece = choice.get("text") or (choice.get("delta") or {}).get("content")
                            if piece:
                                text.append(piece)
            if body.get("stream") and not done:
                return result(False, 200, "stream ended without [DONE]")
            return result(True, 200)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return result(False, 0, repr(exc))


def _client(headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """No connection limit (the concurrency is the caller's), no total timeout (long streams);
    ``headers`` go with every request (e.g. :attr:`ServerProcess.infer_headers`)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
        headers=headers,
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
    urls: dict[str, str],
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    swap: bool,
    headers: dict[str, dict[str, str]] | None = None,
) -> PairedResult:
    """``concurrency`` streams on one engine at once, half to each of the two ``urls``: stream
    ``p`` of the first half and stream ``p`` of the second run the same bodies in the same order,
    so each request has a twin that shares its engine steps. ``swap`` flips which half goes where
    (alternate it between rounds). ``headers``: per name of ``urls`` (e.g. the server's key)."""
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
                sides[name][(pair, position)] = await _one(
                    session, urls[name], _streamed(body), (headers or {}).get(name, {})
                )

        await asyncio.gather(*(stream(k) for k in range(concurrency)))
    return PairedResult(sides)


# -- alias moves under load --------------------------------------------------------------------
@dataclass
class AdminCall:
    """One admin call (an alias move, a load, an unload): ``started`` when it was sent and
    ``done`` when its answer had arrived (``time.perf_counter()``)."""

    action: str
    model: str
    started: float
    done: float
    status: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def seconds(self) -> float:
        return self.done - self.started


def allowed_versions(
    initial: str, moves: Sequence[AdminCall], sent: float, answered: float
) -> list[str]:
    """The versions that may answer a request for an alias that moved ``moves`` (in order, each
    to ``move.model``) from ``initial``; ``sent``/``answered``: when the request went out and
    when its response headers came back.

    How the server swaps (services/server/admin_ops.py ``set_alias``): the PUT loads the new
    version, writes the registry, and its reconcile pass swaps in a new name table in one
    assignment, all before the PUT answers; a request's name is looked up once, on the table
    current then, after it was sent and before its headers go out. So the swap falls somewhere
    between the PUT's sending and its answer, and the lookup between ``sent`` and ``answered``:

    - a request sent after a move was answered gets that move's version (or a later one);
    - a request answered before a move was sent gets the version from before it;
    - a request in flight while a move was (lookup and swap windows overlap) may get either.

    Failed moves are left out (a failed move fails the benchmark anyway)."""
    done = [m for m in moves if m.ok]
    timeline = [initial, *(m.model for m in done)]
    low = sum(m.done <= sent for m in done)
    high = sum(m.started < answered for m in done)
    return timeline[low : high + 1]


@dataclass
class AliasLoad:
    """What :func:`run_alias_load` saw: the alias's requests, the moves, the other adapters'
    loads and unloads and the one request sent to each while it was loaded."""

    initial: str
    requests: list[RequestResult] = field(default_factory=list)
    moves: list[AdminCall] = field(default_factory=list)
    churn: list[AdminCall] = field(default_factory=list)
    churn_requests: list[RequestResult] = field(default_factory=list)
    wall_s: float = 0.0
    body_index: list[int] = field(default_factory=list)
    """For each of ``requests``: which of the ``bodies`` it sent."""

    def allowed(self, r: RequestResult) -> list[str]:
        return allowed_versions(self.initial, self.moves, r.started, r.answered)

    def misattributed(self) -> list[RequestResult]:
        """Answered (200) by a version the alias did not name while the request was in flight."""
        return [
            r
            for r in self.requests
            if r.status == 200 and r.answered and r.version not in self.allowed(r)
        ]

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.requests if r.ok]
        failed = [r for r in self.requests if not r.ok]
        tokens = sum(r.tokens for r in ok)
        lat = [r.latency_s for r in ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        answered_by: dict[str, int] = {}
        for r in self.requests:
            answered_by[r.version or "(none)"] = answered_by.get(r.version or "(none)", 0) + 1
        loads = [c for c in self.churn if c.action == "load"]
        unloads = [c for c in self.churn if c.action == "unload"]
        admin_failed = [c for c in [*self.moves, *self.churn] if not c.ok]
        wrong = self.misattributed()

        def q(values: Sequence[float], quantile: float) -> float | None:
            return round(_quantile(values, quantile), 4) if values else None

        return {
            "requests": len(self.requests),
            "failed": len(failed),
            "misattributed": len(wrong),
            "in_flight_during_a_move": sum(len(self.allowed(r)) > 1 for r in self.requests),
            "answered_by": dict(sorted(answered_by.items())),
            "tokens": tokens,
            "wall_s": round(self.wall_s, 2),
            "tokens_per_s": round(tokens / self.wall_s, 1) if self.wall_s else 0.0,
            "latency_p50_s": q(lat, 0.5),
            "latency_p99_s": q(lat, 0.99),
            "ttft_p50_s": q(ttft, 0.5),
            "ttft_p99_s": q(ttft, 0.99),
            "moves": [
                {"to": m.model, "seconds": round(m.seconds, 3), "status": m.status}
                for m in self.moves
            ],
            "loads": len(loads),
            "unloads": len(unloads),
            "load_seconds_p50_max": [
                q([c.seconds for c in loads], 0.5),
                q([c.seconds for c in loads], 1),
            ],
            "unload_seconds_p50_max": [
                q([c.seconds for c in unloads], 0.5),
                q([c.seconds for c in unloads], 1),
            ],
            "admin_calls_failed": len(admin_failed),
            "churn_requests": len(self.churn_requests),
            "churn_requests_failed": sum(not r.ok for r in self.churn_requests),
            "failures": [f"{r.status} {r.error}"[:200] for r in failed[:10]]
            + [f"{c.action} {c.model}: {c.status} {c.error}"[:200] for c in admin_failed[:10]]
            + [
                f"churn request: {r.status} {r.error}"[:200]
                for r in self.churn_requests
                if not r.ok
            ][:10],
            "misattributed_examples": [
                {
                    "version": r.version,
                    "allowed": self.allowed(r),
                    "sent_s": round(r.started - self._t0, 3),
                    "answered_s": round(r.answered - self._t0, 3),
                }
                for r in wrong[:10]
            ],
        }

    @property
    def _t0(self) -> float:
        return min((r.started for r in self.requests), default=0.0)


async def _admin_call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    action: str,
    model: str,
) -> AdminCall:
    started = time.perf_counter()
    try:
        async with session.request(method, url, json=body, headers=headers) as resp:
            text = await resp.text()
            error = "" if resp.status == 200 else text[:300]
            return AdminCall(action, model, started, time.perf_counter(), resp.status, error)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return AdminCall(action, model, started, time.perf_counter(), 0, repr(exc))


async def run_alias_load(
    url: str,
    *,
    model: str,
    alias_path: str,
    initial: str,
    targets: Sequence[str],
    move_at: Sequence[float],
    duration: float,
    concurrency: int,
    bodies: Sequence[dict[str, Any]],
    infer_headers: dict[str, str],
    admin_headers: dict[str, str],
    churn: Sequence[str] = (),
    churn_pause: float = 1.0,
    ramp_s: float = 0.0,
) -> AliasLoad:
    """``concurrency`` streaming clients call ``model`` (an alias naming ``initial``) back to back
    for ``duration`` seconds, client k's j-th request with ``bodies[(k + j) % len(bodies)]`` (its
    ``model`` replaced); clients start ``ramp_s / concurrency`` apart. Bodies of different lengths
    and the ramp keep the clients from marching in step, so requests arrive all the time,
    during the moves too. Meanwhile the alias moves to each of ``targets`` at ``move_at`` seconds after the start
    (``PUT url + alias_path``), and, when ``churn`` names versions, each in turn is loaded
    (``/admin/adapters/load``), called once, and unloaded (``/admin/adapters/unload``), with
    ``churn_pause`` seconds between rounds, until the end. Requests started before the end
    finish; nothing is retried."""
    if len(targets) != len(move_at):
        raise ValueError("one move time per target")
    out = AliasLoad(initial)
    async with _client() as session:
        t0 = time.perf_counter()
        end = t0 + duration

        async def stream(k: int) -> None:
            await asyncio.sleep(ramp_s * k / concurrency)
            for i in itertools.count(k):
                if time.perf_counter() >= end:
                    return
                body = _streamed({**bodies[i % len(bodies)], "model": model})
                result = await _one(session, url + "/v1/completions", body, infer_headers)
                out.requests.append(result)
                out.body_index.append(i % len(bodies))

        async def mover() -> None:
            for target, at in zip(targets, move_at, strict=True):
                await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
                out.moves.append(
                    await _admin_call(
                        session,
                        "PUT",
                        url + alias_path,
                        {"version": target},
                        admin_headers,
                        "move",
                        target,
                    )
                )

        async def churner() -> None:
            for name in itertools.cycle(churn):
                if time.perf_counter() >= end:
                    return
                load = await _admin_call(
                    session,
                    "POST",
                    url + "/admin/adapters/load",
                    {"model": name},
                    admin_headers,
                    "load",
                    name,
                )
                out.churn.append(load)
                if load.ok:
                    body = _streamed({**bodies[0], "model": name})
                    out.churn_requests.append(
                        await _one(session, url + "/v1/completions", body, infer_headers)
                    )
                out.churn.append(
                    await _admin_call(
                        session,
                        "POST",
                        url + "/admin/adapters/unload",
                        {"model": name},
                        admin_headers,
                        "unload",
                        name,
                    )
                )
                await asyncio.sleep(churn_pause)

        tasks = [stream(k) for k in range(concurrency)] + [mover()]
        if churn:
            tasks.append(churner())
        await asyncio.gather(*tasks)
        out.wall_s = time.perf_counter() - t0
    return out


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
    """Everything a run measured, as ``bench/results/<name>.details.json``: beside, not over,
    the ``<name>.json`` that ``_report.record`` writes with the published figures."""
    out = Path(__file__).resolve().parents[1] / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.details.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def prepare_data_dir(data_dir: Path) -> Path:
    """A data dir holding the embedded base model (hard links to an already prepared copy when
    the test cache has one, else converted once)."""
    from shared.basemodel import prepare_embedded_model
    from shared.settings import EMBEDDED_BASE_MODEL, SharedSettings

    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / "models" / EMBEDDED_BASE_MODEL
    cache = Path(__file__).resolve().parents[1] / ".loraplex" / "test-cache" / "models"
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
