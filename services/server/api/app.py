"""The FastAPI application: routes, error mapping, and the service's lifespan."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from services.server.api import admin, openai, ops
from services.server.api.responses import serve_proxied
from services.server.auth import Access, keyring
from services.server.config import ServerSettings
from services.server.routes import BY_PATH, PROXIED_ROUTES
from services.server.service import ServerService
from shared.auth import DOCS, METRICS, PUBLIC_OPS, Guard, Rule, rule
from shared.http import install_error_handlers

log = logging.getLogger(__name__)


def guard_rules(settings: ServerSettings) -> list[Rule]:
    """Which scope each route needs (admin routes also check the admin scope themselves)."""
    return [
        *PUBLIC_OPS,
        *METRICS,
        *DOCS,
        *(
            rule(r.method, re.escape(r.path), r.scope, max_body=settings.max_body_bytes)
            for r in PROXIED_ROUTES
        ),
        rule("GET HEAD", r"/v1/(models|adapters)(/.*)?", "infer", "read"),
        # An upload carries an adapter's weights (megabytes), not a JSON body: the route's own
        # limit (api/admin.py import_adapter, 16x max_body_bytes), not max_json_bytes.
        rule("POST", r"/admin/adapters/import", "admin", max_body=settings.max_body_bytes * 16),
        rule("GET HEAD POST PUT DELETE PATCH", r"/admin/.*", "admin"),
    ]


class ServerApp(FastAPI):
    guard: Guard | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.guard is not None and scope["type"] == "http":
            # The key and the body cap are checked before anything reads the body.
            await self.guard(dict(scope), receive, send, self._dispatch)
            return
        await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The proxied routes are served without FastAPI's routing and middleware (see
        # api/responses.py); their FastAPI routes document them in the OpenAPI schema and answer
        # identically.
        if scope["type"] == "http":
            route = BY_PATH.get((scope["method"], scope["path"]))
            service = getattr(self.state, "service", None)
            if route is not None and service is not None:
                await serve_proxied(service, route, scope, receive, send)
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
    app.guard = Guard(
        keys=keyring(settings),
        rules=guard_rules(settings),
        max_body=settings.max_json_bytes,
        max_concurrent=settings.max_concurrent_per_key,
        retry_after_s=settings.retry_after_s,
    )
    app.include_router(openai.router)
    app.include_router(ops.router)
    if Access(settings).admin_enabled:
        app.include_router(admin.router)

    install_error_handlers(app)

    return app
