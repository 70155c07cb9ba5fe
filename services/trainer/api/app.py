"""The trainer's FastAPI app, shaped so the official ``openai`` SDK works against it unchanged."""

from __future__ import annotations

from fastapi import FastAPI

from services.trainer.api.routes_files import router as files_router
from services.trainer.api.routes_jobs import router as jobs_router
from services.trainer.config import TrainerSettings
from services.trainer.statuses import WAITING, JobStatus
from shared.auth import rule
from shared.registry.models import TrainingJobRow
from shared.service_app import QueueSpec, create_service_app, serve
from shared.settings import load_settings

# Multipart framing around the file: boundary lines, headers and the ``purpose`` field.
MULTIPART_OVERHEAD = 64 * 1024
QUEUE = QueueSpec("trainer", TrainingJobRow, waiting=WAITING, running=(JobStatus.RUNNING,))


def create_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or load_settings(TrainerSettings)
    app = create_service_app(
        "loraplex trainer",
        settings,
        routers=[files_router, jobs_router],
        queue=QUEUE,
        rules=[
            rule(
                "POST",
                r"/v1/files",
                "train",
                max_body=settings.max_upload_bytes + MULTIPART_OVERHEAD,
            ),
            rule("GET HEAD", r"/v1/files(/.*)?", "read"),
            rule("POST", r"/v1/fine_tuning/jobs(/[^/]+/cancel)?", "train"),
            rule("GET HEAD", r"/v1/fine_tuning/jobs(/.*)?", "read"),
        ],
    )

    return app


def main() -> None:
    settings = load_settings(TrainerSettings)
    host, port = settings.trainer_host, settings.trainer_port
    serve(create_app(settings), settings, service="trainer-api", host=host, port=port)


if __name__ == "__main__":
    main()
