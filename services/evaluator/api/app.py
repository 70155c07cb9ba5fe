"""The evaluator's FastAPI app (``python -m services.evaluator``; port 8002 by default)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.evaluator.api import errors
from services.evaluator.api.routes import router
from services.evaluator.config import EvaluatorSettings
from shared.registry.db import open_registry
from shared.settings import load_settings


def create_app(settings: EvaluatorSettings | None = None) -> FastAPI:
    settings = settings or load_settings(EvaluatorSettings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.registry = open_registry(settings)
        try:
            yield
        finally:
            app.state.registry.dispose()

    app = FastAPI(title="loraplex evaluator", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    errors.install(app)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(router)
    return app


def main() -> None:
    import uvicorn

    settings = load_settings(EvaluatorSettings)
    uvicorn.run(
        create_app(settings),
        host=settings.evaluator_host,
        port=settings.evaluator_port,
        log_level="info",
    )


if __name__ == "__main__":
    main()
