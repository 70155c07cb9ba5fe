"""The evaluator's FastAPI app (``python -m services.evaluator``; port 8002 by default)."""

from __future__ import annotations

from fastapi import FastAPI

from services.evaluator.api.routes import router
from services.evaluator.config import EvaluatorSettings
from services.evaluator.statuses import RunStatus
from shared.auth import rule
from shared.registry.models import EvaluationRunRow
from shared.service_app import QueueSpec, create_service_app, serve
from shared.settings import load_settings

QUEUE = QueueSpec(
    "evaluator",
    EvaluationRunRow,
    waiting=(RunStatus.QUEUED,),
    running=(RunStatus.RUNNING,),
)


def create_app(settings: EvaluatorSettings | None = None) -> FastAPI:
    settings = settings or load_settings(EvaluatorSettings)
    return create_service_app(
        "loraplex evaluator",
        settings,
        routers=[router],
        queue=QUEUE,
        rules=[
            rule("POST", r"/v1/evaluations", "evaluate"),
            rule("GET HEAD", r"/v1/evaluations(/.*)?", "read"),
            rule("POST PUT DELETE", r"/v1/policies(/.*)?", "admin"),
            rule("GET HEAD", r"/v1/policies(/.*)?", "read"),
        ],
    )


def main() -> None:
    settings = load_settings(EvaluatorSettings)
    host, port = settings.evaluator_host, settings.evaluator_port
    serve(create_app(settings), settings, service="evaluator-api", host=host, port=port)


if __name__ == "__main__":
    main()
