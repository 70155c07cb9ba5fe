"""What the trainer and evaluator APIs share: the app skeleton, its dependencies and the uvicorn
start.

Each is a FastAPI app holding one registry for its lifetime, answering ``/health`` and exposing
``/metrics`` in the Prometheus format. Their work queues live in the registry, so the queue gauges
are read from it at scrape time (a custom collector): every API replica reports the same, true
depth, which is what KEDA and the HPA scale the workers on (``deploy/k8s/components``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from shared.auth import DOCS, METRICS, PUBLIC_OPS, Guard, GuardMiddleware, Rule, check_bind
from shared.http import install_error_handlers
from shared.registry.db import Registry, open_registry
from shared.registry.models import EvaluationRunRow, TrainingJobRow
from shared.settings import SharedSettings


@dataclass(frozen=True)
class QueueSpec:
    """A work queue on registry rows: its metric prefix and which statuses mean what."""

    prefix: str  # "trainer" -> loraplex_trainer_queue_depth
    row_cls: type[TrainingJobRow] | type[EvaluationRunRow]
    waiting: tuple[str, ...]  # not yet claimed by a worker
    running: tuple[str, ...]


class QueueCollector(Collector):
    """Queue depth, jobs by status and the age of the oldest waiting job, read at scrape time."""

    def __init__(self, get_registry: Callable[[], Registry | None], spec: QueueSpec) -> None:
        self.get_registry = get_registry
        self.spec = spec

    def collect(self) -> Iterable[GaugeMetricFamily]:
        spec, cls = self.spec, self.spec.row_cls
        name = f"loraplex_{spec.prefix}"
        registry = self.get_registry()
        up = GaugeMetricFamily(f"{name}_registry_up", "1 when the registry answered this scrape")
        if registry is None:
            up.add_metric([], 0)
            yield up
            return
        try:
            with registry.read_session() as session:
                rows = session.execute(
                    select(cls.status, func.count(), func.min(cls.created_at))
                    .where(cls.status.in_(spec.waiting + spec.running))
                    .group_by(cls.status)
                ).all()
        except Exception:  # a scrape must answer even when the database does not
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        counts = {status: count for status, count, _ in rows}
        depth = GaugeMetricFamily(f"{name}_queue_depth", "Jobs waiting for a worker")
        depth.add_metric([], sum(counts.get(s, 0) for s in spec.waiting))
        yield depth
        running = GaugeMetricFamily(f"{name}_jobs_running", "Jobs a worker is running")
        running.add_metric([], sum(counts.get(s, 0) for s in spec.running))
        yield running
        oldest = [created for status, _, created in rows if status in spec.waiting and created]
        age = GaugeMetricFamily(
            f"{name}_oldest_waiting_seconds", "Age of the oldest job waiting for a worker"
        )
        age.add_metric([], _age_s(min(oldest)) if oldest else 0.0)
        yield age


def _age_s(created: datetime) -> float:
    if created.tzinfo is None:  # SQLite hands back naive UTC datetimes
        created = created.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - created).total_seconds())


def create_service_app(
    title: str,
    settings: SharedSettings,
    *,
    routers: Sequence[APIRouter],
    queue: QueueSpec,
    rules: Sequence[Rule] = (),
) -> FastAPI:
    """A FastAPI app with the registry in ``app.state``, ``/health`` and ``/metrics``, the shared
    error mapping, and the :class:`~shared.auth.Guard` in front (``rules``: the scope each route
    needs, after the public ``/health`` and the ``metrics`` scope of ``/metrics``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.registry = open_registry(settings)
        try:
            yield
        finally:
            app.state.registry.dispose()
            app.state.registry = None

    app = FastAPI(title=title, version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = None
    install_error_handlers(app)
    guard = Guard(
        keys=settings.keyring(),
        rules=[*PUBLIC_OPS, *METRICS, *DOCS, *rules],
        max_body=settings.max_json_bytes,
        max_concurrent=settings.max_concurrent_per_key,
    )
    app.add_middleware(GuardMiddleware, guard=guard)

    # One Prometheus registry per app (not the global one): tests build many apps in one process.
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(QueueCollector(lambda: app.state.registry, queue))

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus_metrics() -> Response:
        """Queue depth and jobs by state, in the Prometheus text format."""
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app


def get_registry(request: Request) -> Registry:
    """The app's registry, opened by the lifespan of :func:`create_service_app`."""
    registry: Registry = request.app.state.registry
    return registry


def get_settings(request: Request) -> Any:
    """The app's settings; each service's ``SettingsDep`` annotates them with its own class."""
    return request.app.state.settings


RegistryDep = Annotated[Registry, Depends(get_registry)]


def serve(app: Any, settings: SharedSettings, *, service: str, host: str, port: int) -> None:
    """Run an app under uvicorn until SIGTERM/SIGINT (which drains in-flight requests), logging
    through :mod:`shared.logs` at ``settings.log_level`` (``log_config=None``: uvicorn's lines get
    the same format). With no keys it listens on loopback only (:func:`shared.auth.check_bind`)."""
    import uvicorn

    from shared.logs import configure, event

    log_level = settings.log_level
    configure(service, log_level)
    check_bind(service, host, settings.keyring())
    event(logging.getLogger(service), "service.started", service=service, host=host, port=port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=30,
    )
