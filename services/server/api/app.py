"""The FastAPI application: routes, error mapping, and the service's lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.server.api import admin, openai, ops
from services.server.config import ServerSettings
from services.server.errors import Unavailable, error_body
from services.server.service import ServerService
from shared.errors import LoraplexError

log = logging.getLogger(__name__)


def create_app(
    settings: ServerSettings, *, service_factory: Callable[[], ServerService] | None = None
) -> FastAPI:
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

    app = FastAPI(
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
    async def _domain_error(_: Request, exc: LoraplexError) -> JSONResponse:
        headers = {}
        if isinstance(exc, Unavailable):
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status_code >= 500 and not isinstance(exc, Unavailable):
            log.error("request failed: %s", exc)
        return JSONResponse(error_body(exc), status_code=exc.status_code, headers=headers)

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
