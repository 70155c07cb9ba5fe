"""OpenAI-compatible routes: completions and chat (proxied to vLLM), models, residency."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from services.server.api.deps import InferenceScope, Service
from services.server.api.responses import RelayResponse
from services.server.errors import TooLarge
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


async def _proxy(
    service: Service, endpoint: str, request: Request, authorization: str | None
) -> Response:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > service.settings.max_body_bytes:
        raise TooLarge(
            f"request body of {length} bytes is above the limit of "
            f"{service.settings.max_body_bytes}",
            param="body",
        )
    raw = await request.body()
    if len(raw) > service.settings.max_body_bytes:
        raise TooLarge("request body too large", param="body")
    # A client that leaves before the answer cancels the upstream request (the engine stops
    # generating); streams are watched by RelayResponse once they start.
    handling = asyncio.ensure_future(service.proxy.handle(endpoint, raw, authorization))
    watching = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({handling, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not handling.done():
            handling.cancel()
    if not handling.done() or handling.cancelled():
        return Response(status_code=499)
    reply = handling.result()
    if reply.stream is not None:
        return RelayResponse(reply.stream, reply.status, reply.headers)
    return Response(reply.body, status_code=reply.status, headers=reply.headers)


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.post(
    "/chat/completions",
    openapi_extra=CHAT_SCHEMA,
    summary="Chat completion (OpenAI), from the base model, an adapter version or an alias.",
)
async def chat_completions(
    request: Request, service: Service, authorization: Annotated[str | None, Header()] = None
) -> Response:
    return await _proxy(service, "chat", request, authorization)


@router.post(
    "/completions",
    openapi_extra=COMPLETION_SCHEMA,
    summary="Text completion (OpenAI), including echo with prompt log-probabilities.",
)
async def completions(
    request: Request, service: Service, authorization: Annotated[str | None, Header()] = None
) -> Response:
    return await _proxy(service, "completions", request, authorization)


@router.get("/models", response_model=ModelList, response_model_exclude_none=False)
async def models(service: Service, scope: InferenceScope) -> ModelList:
    """The base model, every adapter version served and every alias, with metadata."""
    return await service.models(scope)


@router.get("/adapters", response_model=ResidencyList)
async def adapters(service: Service, scope: InferenceScope) -> ResidencyList:
    """Adapter residency per engine: state, rank, size, load time, last use, pins, in flight."""
    return service.residency(scope)
