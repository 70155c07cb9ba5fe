"""The trainer's FastAPI app, shaped so the official ``openai`` SDK works against it unchanged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from services.trainer.api import errors
from services.trainer.api.routes_files import router as files_router
from services.trainer.api.routes_jobs import router as jobs_router
from services.trainer.config import TrainerSettings
from services.trainer.jobs import QUEUED, RUNNING, VALIDATING
from shared.registry.models import TrainingJobRow
from shared.service_app import QueueSpec, create_service_app, serve
from shared.settings import load_settings

# Multipart framing around the file: boundary lines, headers and the ``purpose`` field.
MULTIPART_OVERHEAD = 64 * 1024
QUEUE = QueueSpec("trainer", TrainingJobRow, waiting=(VALIDATING, QUEUED), running=(RUNNING,))


def create_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or load_settings(TrainerSettings)
    app = create_service_app(
        "loraplex trainer",
        settings,
        routers=[files_router, jobs_router],
        install_errors=errors.install,
        queue=QUEUE,
    )

    @app.middleware("http")
    async def upload_limit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Refuse an oversized upload before its body is read; the route counts again while
        # spooling, for clients that send no (or a wrong) Content-Length.
        if request.method == "POST" and request.url.path.rstrip("/") == "/v1/files":
            length = request.headers.get("content-length")
            too_big = settings.max_upload_bytes + MULTIPART_OVERHEAD
            if length is not None and length.isdigit() and int(length) > too_big:
                return JSONResponse(
                    errors.error_body(
                        "file_too_large",
                        f"the upload is {length} bytes, above the limit of "
                        f"{settings.max_upload_bytes} bytes (LORAPLEX_MAX_UPLOAD_BYTES)",
                        "file",
                    ),
                    status_code=413,
                )
        return await call_next(request)

    return app


def main() -> None:
    settings = load_settings(TrainerSettings)
    serve(
        create_app(settings),
        service="trainer-api",
        host=settings.trainer_host,
        port=settings.trainer_port,
        log_level=settings.log_level,
    )


if __name__ == "__main__":
    main()
