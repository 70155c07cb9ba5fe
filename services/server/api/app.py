"""The FastAPI application: routes, error mapping, and the service's lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from services.server.api import admin, openai, ops
from services.server.api.responses import error_reply, serve_proxied
from services.server.config import ServerSettings
from services.server.errors import error_body
from services.server.service import ServerService
from shared.errors import LoraplexError

log = logging.getLogger(__name__)

# Served without FastAPI's routing and middleware (see api/responses.py); the FastAPI routes of
# the same paths document them in the OpenAPI schema and answer identically.
PROXIED = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class ServerApp(FastAPI):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = PROXIED.get(scope["path"])
            service = getattr(self.state, "service", None)
            if endpoint is not None and service is not None:
                await serve_proxied(service, endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: ServerSettings, *, service_factory: Callable[[], ServerService] | None = None
) -> ServerApp:
    """Build the app; the service (base model, engines, reconciler) starts with the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = service_factory() if service_factory else ServerService(settings)
        app.state.service = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = ServerApp(
        title="loraplex server",
        version="0.1.0",
        description="OpenAI-compatible API over vLLM engines serving many LoRA adapters.",
        lifespan=lifespan,
    )
    app.include_router(openai.router)
    app.include_router(ops.router)
    if settings.admin_key is not None and settings.admin_key.get_secret_value():
        app.include_router(admin.router)

    @app.exception_handler(LoraplexError)
    async def _domain_error(_: Request, exc: LoraplexError) -> Response:
        status, headers, body = error_reply(exc)
        return Response(
            body,
            status_code=status,
            headers={name.decode(): value.decode() for name, value in headers},
        )

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
            for err in exc.errors()
        ]
        err = LoraplexError("invalid request", details=details, param=None, code="invalid_request")
        err.status_code = 422
        return JSONResponse(error_body(err), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {
            "error": {
                "message": str(exc.detail),
                "type": "invalid_request_error",
                "code": str(exc.status_code),
                "param": None,
            }
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    return app
