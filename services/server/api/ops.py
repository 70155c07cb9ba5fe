"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.server.api.deps import Service

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive (engines may still be starting)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(service: Service) -> JSONResponse:
    """200 when an engine serves the base model and every desired adapter is loaded."""
    ok, report = service.ready()
    return JSONResponse(report, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(service: Service) -> Response:
    """Per-adapter and per-engine metrics, plus the engines' own vllm:* series."""
    return Response(await service.metrics_text(), media_type=CONTENT_TYPE_LATEST)
