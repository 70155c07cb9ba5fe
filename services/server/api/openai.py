"""OpenAI-compatible routes: completions and chat (proxied to vLLM), models, residency."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response

from services.server.api.deps import InferenceScope, Service
from services.server.api.responses import ProxiedResponse
from services.server.routes import PROXIED_ROUTES, ProxiedRoute
from services.server.schemas import ModelList, ResidencyList

router = APIRouter(prefix="/v1", tags=["openai"])


def proxied_handler(route: ProxiedRoute) -> Callable[..., Awaitable[Response]]:
    """The FastAPI function of a proxied route: its OpenAPI entry, and a fallback."""

    async def handler(
        service: Service, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        # Normally answered before routing (ServerApp); same code either way.
        return ProxiedResponse(service, route)

    handler.__name__ = handler.__qualname__ = route.handler
    return handler


for _route in PROXIED_ROUTES:
    router.add_api_route(
        _route.path.removeprefix(router.prefix),
        proxied_handler(_route),
        methods=[_route.method],
        openapi_extra=_route.request_body,
        summary=_route.summary,
        name=_route.handler,
    )


@router.get("/models", response_model=ModelList, response_model_exclude_none=False)
async def models(service: Service, scope: InferenceScope) -> ModelList:
    """The base model, every adapter version served and every alias, with metadata."""
    return await service.catalog.models(scope)


@router.get("/adapters", response_model=ResidencyList)
async def adapters(service: Service, scope: InferenceScope) -> ResidencyList:
    """Adapter residency per engine: state, rank, size, load time, last use, pins, in flight."""
    return service.catalog.residency(scope)
