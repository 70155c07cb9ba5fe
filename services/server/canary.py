"""The canary: after a load, the adapter's next-token log-probabilities on a fixed prompt must
differ from the base model's, or its LoRA changes nothing and the version is refused as not
servable. On when ``canary_check`` is set; the adapter manager runs it (``AdapterManager.canary``).
"""

from __future__ import annotations

from services.server.engine_client import EngineClient
from services.server.engines import Engine
from services.server.errors import EngineError
from services.server.names import VersionInfo
from shared.errors import ValidationError

CANARY_PROMPT = "The quick brown fox jumps over the lazy dog. The capital of France is"


class Canary:
    """Compares an adapter's next-token log-probabilities with the base model's on one engine."""

    def __init__(self, clients: dict[str, EngineClient], base_name: str, timeout: float) -> None:
        self.clients = clients
        self.base_name = base_name
        self.timeout = timeout

    async def __call__(self, engine: Engine, version: VersionInfo) -> None:
        base = await self._next_token_logprobs(engine, engine.served_name or self.base_name)
        adapted = await self._next_token_logprobs(engine, version.id)
        shared = set(base) & set(adapted)
        if (
            shared
            and all(abs(base[t] - adapted[t]) < 1e-4 for t in shared)
            and len(shared) == len(base)
        ):
            raise ValidationError(
                f"canary: {version.id} answers exactly like the base model (its LoRA changes "
                "nothing)",
                param="model",
                code="adapter_not_servable",
            )

    async def _next_token_logprobs(self, engine: Engine, model: str) -> dict[str, float]:
        try:
            return await self.clients[engine.id].next_token_logprobs(
                model, CANARY_PROMPT, self.timeout
            )
        except EngineError as exc:
            # The engine refused the request for this model: the version is not servable.
            raise ValidationError(
                f"canary request for {model} failed with {exc.engine_status}: {exc.message}",
                param="model",
            ) from None
