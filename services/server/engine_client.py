"""The calls the server makes to an engine besides proxying: health, adapter loads and unloads,
metrics, the canary's completion. Requests themselves go through :mod:`services.server.upstream`.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from services.server.errors import EngineError


class ControlSession:
    """The one aiohttp session of every engine's control calls.

    Made with the server's parts, opened on the event loop by :meth:`open` (aiohttp needs a
    running loop), closed by :meth:`close` whether or not it was opened.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        # Idle connections are dropped before vLLM (uvicorn) closes them after 5 s.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=4)
        self._session = aiohttp.ClientSession(connector=connector)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the engine control session is not open (the server is stopped)")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class EngineClient:
    """The calls the server makes to one engine besides proxying (see :mod:`proxy`)."""

    def __init__(self, control: ControlSession, url: str) -> None:
        self.control = control
        self.url = url

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.control.session

    async def health(self, timeout: float) -> bool:
        try:
            async with self.session.get(
                f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def models(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with self.session.get(
            f"{self.url}/v1/models", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                raise EngineError(f"GET /v1/models answered {resp.status}")
            data = await resp.json()
        return list(data.get("data", []))

    async def load_adapter(self, name: str, path: str, timeout: float) -> None:
        try:
            await self._post(
                "/v1/load_lora_adapter",
                {"lora_name": name, "lora_path": path},
                timeout,
                f"load {name}",
            )
        except EngineError as exc:
            # Names are version ids, which are immutable content: an engine that already holds
            # this name (it outlived a restart of this server) holds exactly these weights.
            if exc.engine_status == 400 and "already" in exc.message:
                return
            raise

    async def unload_adapter(self, name: str, timeout: float = 30.0) -> None:
        try:
            await self._post("/v1/unload_lora_adapter", {"lora_name": name}, timeout, "unload")
        except EngineError as exc:
            if exc.engine_status not in (400, 404):  # already gone: nothing to do
                raise

    async def metrics_text(self, timeout: float = 3.0) -> str:
        async with self.session.get(
            f"{self.url}/metrics", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            return await resp.text() if resp.status == 200 else ""

    async def next_token_logprobs(
        self, model: str, prompt: str, timeout: float, top: int = 5
    ) -> dict[str, float]:
        """The ``top`` most likely next tokens after ``prompt`` (greedy) and their
        log-probabilities. EngineError with the engine's status and answer when it refuses;
        a connection failure is aiohttp's own error."""
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": top,
        }
        async with self.session.post(
            f"{self.url}/v1/completions",
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            if resp.status != 200:
                raise EngineError((await resp.text())[:300], engine_status=resp.status)
            data = await resp.json()
        first = data["choices"][0]["logprobs"]["top_logprobs"][0]
        return {str(k): float(v) for k, v in first.items()}

    async def _post(self, path: str, body: dict[str, Any], timeout: float, what: str) -> None:
        try:
            async with self.session.post(
                f"{self.url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                if resp.status == 200:
                    return
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EngineError(f"{what}: engine {self.url} unreachable ({exc!r})") from exc
        raise EngineError(
            f"{what}: engine answered {resp.status}: {_engine_message(text)}",
            engine_status=resp.status,
        )


def _engine_message(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message", err))[:500]
    return str(err)[:500]
