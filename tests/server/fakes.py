"""Test doubles for the server: a fake vLLM engine (HTTP, same routes and shapes), a tiny base
model folder and adapters built from raw tensors, and a uvicorn runner in a thread."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from safetensors.numpy import save_file
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from services.server.engines import Engine, EngineState, Residency, ResidencyState
from services.server.names import VersionInfo

HIDDEN = 16
VOCAB = 100
MAX_MODEL_LEN = 2048
LAYERS = {"q_proj": (HIDDEN, HIDDEN), "v_proj": (8, HIDDEN), "o_proj": (HIDDEN, HIDDEN)}


# -- uvicorn in a thread -------------------------------------------------------------------------
class ThreadServer:
    """Runs an ASGI app on 127.0.0.1 (free port) in a background thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def start(self, timeout: float = 30) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# -- fake engine -------------------------------------------------------------------------------
@dataclass
class FakeEngine:
    """Behaves like vLLM's OpenAI server with runtime LoRA updating, for what the server uses."""

    base: str = "tiny-base"
    healthy: bool = True
    chunk_delay: float = 0.01
    chunks: int = 5
    loras: dict[str, str] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    cancelled: int = 0
    refuse: set[str] = field(default_factory=set)
    log: list[tuple[str, str, int]] = field(default_factory=list)
    """(event, model, active) in order: 'start' / 'end' of each generation request."""

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/v1/load_lora_adapter", self.load, methods=["POST"]),
                Route("/v1/unload_lora_adapter", self.unload, methods=["POST"]),
                Route("/v1/completions", self.generate, methods=["POST"]),
                Route("/v1/chat/completions", self.generate, methods=["POST"]),
                Route("/metrics", self.metrics),
            ]
        )

    async def health(self, _: Request) -> Response:
        return Response(status_code=200 if self.healthy else 503)

    async def models(self, _: Request) -> Response:
        data = [{"id": self.base, "object": "model", "parent": None, "root": self.base}]
        data += [
            {"id": n, "object": "model", "parent": self.base, "root": p}
            for n, p in self.loras.items()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def load(self, request: Request) -> Response:
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        if name in self.loras:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        if not Path(path).is_dir():
            return _error(404, f"No adapter found for {path}")
        if name in self.refuse:
            return _error(500, f"Loading lora {name} failed: bad tensors")
        self.loras[name] = path
        self.loads.append(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: Request) -> Response:
        name = (await request.json())["lora_name"]
        if name not in self.loras:
            return _error(404, f"The lora adapter '{name}' cannot be found.")
        del self.loras[name]
        self.unloads.append(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def generate(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        model = body.get("model")
        if model != self.base and model not in self.loras:
            return _error(404, f"The model `{model}` does not exist.")
        if body.get("max_tokens") == -1:
            return _error(400, "max_tokens must be at least 1")
        if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > MAX_MODEL_LEN:
            # What vLLM answers: only the engine knows its context length.
            return _error(
                400,
                f"This model's maximum context length is {MAX_MODEL_LEN} tokens; max_tokens "
                f"{body['max_tokens']} is too large",
            )
        kind = "chat.completion" if "messages" in body else "text_completion"
        usage = {
            "prompt_tokens": 3,
            "completion_tokens": self.chunks,
            "total_tokens": 3 + self.chunks,
        }
        if not body.get("stream"):
            self._start(model)
            try:
                await asyncio.sleep(self.chunk_delay * self.chunks)
            finally:
                self._end(model)
            text = f"answer from {model}"
            choice: dict[str, Any] = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length",
                }
                if kind == "chat.completion"
                else {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
            )
            return JSONResponse(
                {
                    "id": "x",
                    "object": kind,
                    "created": 1,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._stream(model, kind, include_usage, usage), media_type="text/event-stream"
        )

    async def _stream(
        self, model: str, kind: str, include_usage: bool, usage: dict[str, int]
    ) -> AsyncIterator[bytes]:
        self._start(model)
        done = False
        try:
            for i in range(self.chunks):
                await asyncio.sleep(self.chunk_delay)
                if kind == "chat.completion":
                    choice = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                else:
                    choice = {"index": 0, "text": f"t{i} ", "finish_reason": None}
                event = {
                    "id": "x",
                    "object": f"{kind}.chunk" if kind == "chat.completion" else kind,
                    "created": 1,
                    "model": model,
                    "choices": [choice],
                }
                yield f"data: {json.dumps(event)}\n\n".encode()
            if include_usage:
                event = {
                    "id": "x",
                    "object": "chunk",
                    "created": 1,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(event)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            done = True
        finally:
            if not done:
                self.cancelled += 1
            self._end(model)

    def _start(self, model: str) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.log.append(("start", model, self.active))

    def _end(self, model: str) -> None:
        self.active -= 1
        self.log.append(("end", model, self.active))

    async def metrics(self, _: Request) -> Response:
        text = (
            "# HELP vllm:num_requests_running Number of requests running.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="{self.base}"}} {self.active}\n'
            "# HELP vllm:prompt_tokens_total Prompt tokens.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f'vllm:prompt_tokens_total{{engine="0",model_name="{self.base}"}} 42.0\n'
        )
        return PlainTextResponse(text)


def _error(status: int, message: str) -> Response:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": status}},
        status_code=status,
    )


# -- tiny models -------------------------------------------------------------------------------
def make_base(folder: Path) -> Path:
    """A 'base model' folder with one layer's linear weights (shapes are all the checks need)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tensors = {
        f"model.layers.0.self_attn.{name}.weight": rng.standard_normal(shape).astype(np.float32)
        for name, shape in LAYERS.items()
    }
    tensors["model.embed_tokens.weight"] = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN})
    )
    return folder


def make_adapter(
    folder: Path,
    *,
    r: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 1,
    zero_b: bool = False,
    in_features: int = HIDDEN,
    shapes: dict[str, tuple[int, int]] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    **config: Any,
) -> Path:
    """A PEFT-format LoRA folder for the tiny base; keyword arguments override adapter_config."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for name in targets:
        out_f = (shapes or LAYERS).get(name, (HIDDEN, HIDDEN))[0]
        prefix = f"base_model.model.model.layers.0.self_attn.{name}"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, in_features)).astype(
            np.float32
        )
        b = np.zeros((out_f, r), np.float32) if zero_b else rng.standard_normal((out_f, r))
        tensors[f"{prefix}.lora_B.weight"] = b.astype(np.float32)
    tensors.update(extra_tensors or {})
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": list(targets),
        "bias": "none",
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": "tiny-base",
        "task_type": "CAUSAL_LM",
    }
    cfg.update(config)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def make_info(vid: str) -> VersionInfo:
    """A version of ``name@vN`` on the base ``base``, as the name table holds it."""
    name, _, number = vid.partition("@v")
    return VersionInfo(vid, name, int(number), "a" * 64, "base", "b" * 64, 8, 1, datetime.now(UTC))


def make_engine(eid: str, in_flight: int, holds: list[str], ready: bool = True) -> Engine:
    """An attached engine with ``in_flight`` requests, holding the versions ``holds``."""
    engine = Engine(id=eid, url="http://x", managed=False)
    engine.state = EngineState.READY if ready else EngineState.DOWN
    engine.in_flight = in_flight
    for vid in holds:
        engine.adapters[vid] = Residency(make_info(vid), ResidencyState.LOADED)
    return engine
