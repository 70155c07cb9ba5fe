"""OpenAI-compatible routes: completions and chat (proxied to vLLM), models, residency."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import Response

from services.server.api.deps import InferenceScope, Service
from services.server.api.responses import ProxiedResponse
from services.server.schemas import ModelList, ResidencyList

router = APIRouter(prefix="/v1", tags=["openai"])


def _body_schema(required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": required,
                        "properties": props,
                        "additionalProperties": True,
                    }
                }
            },
        }
    }


_COMMON = {
    "model": {"type": "string", "description": "Base model, name@vN, name:alias or name."},
    "stream": {"type": "boolean"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0},
}
CHAT_SCHEMA = _body_schema(
    ["model", "messages"],
    _COMMON
    | {
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
            },
        }
    },
)
COMPLETION_SCHEMA = _body_schema(
    ["model", "prompt"],
    _COMMON
    | {
        "prompt": {"type": "string"},
        "echo": {"type": "boolean"},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    },
)


@router.post(
    "/chat/completions",
    openapi_extra=CHAT_SCHEMA,
    summary="Chat completion (OpenAI), from the base model, an adapter version or an alias.",
)
async def chat_completions(
    service: Service, authorization: Annotated[str | None, Header()] = None
) -> Response:
    # Normally answered before routing (ServerApp); same code either way.
    return ProxiedResponse(service, "chat")


@router.post(
    "/completions",
    openapi_extra=COMPLETION_SCHEMA,
    summary="Text completion (OpenAI), including echo with prompt log-probabilities.",
)
async def completions(
    service: Service, authorization: Annotated[str | None, Header()] = None
) -> Response:
    return ProxiedResponse(service, "completions")


@router.get("/models", response_model=ModelList, response_model_exclude_none=False)
async def models(service: Service, scope: InferenceScope) -> ModelList:
    """The base model, every adapter version served and every alias, with metadata."""
    return await service.models(scope)


@router.get("/adapters", response_model=ResidencyList)
async def adapters(service: Service, scope: InferenceScope) -> ResidencyList:
    """Adapter residency per engine: state, rank, size, load time, last use, pins, in flight."""
    return service.residency(scope)
