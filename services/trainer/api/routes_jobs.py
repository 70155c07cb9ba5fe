"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, events (paged or streamed), checkpoints."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from services.trainer import job_views, jobs
from services.trainer.api.deps import ReadSessionDep, RegistryDep, SessionDep, SettingsDep
from services.trainer.responses import CheckpointList, EventList, FineTuningJob, JobList
from services.trainer.schemas import JobSpec
from services.trainer.statuses import TERMINAL
from shared.auth import principal_of
from shared.registry.db import Registry

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


def _public(session: Session, job_id: str) -> FineTuningJob:
    job = jobs.get_job(session, job_id)
    progress, tokens, finish = job_views.job_progress(session, job_id)
    return job_views.job_to_api(job, progress, tokens, finish)


@router.post("", response_model=FineTuningJob)
def create_job(
    spec: JobSpec, session: SessionDep, settings: SettingsDep, request: Request
) -> FineTuningJob:
    """Create a job; every check that needs no model runs now, the data checks run next."""
    # The key may add versions only to adapter names it may touch.
    principal = principal_of(request.state)
    principal.require("train", jobs.default_adapter_name(spec), param="suffix")
    if spec.base_adapter:  # continuing another adapter reads its weights
        source = re.split(r"[:@]", spec.base_adapter, maxsplit=1)[0]
        principal.require("train", source, param="base_adapter")
    job = jobs.create_job(session, settings, spec)
    return job_views.job_to_api(job)


@router.get("", response_model=JobList)
def list_jobs(
    session: ReadSessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> JobList:
    """List jobs, newest first."""
    rows, has_more = jobs.list_jobs(session, after=after, limit=limit)
    return JobList(data=[job_views.job_to_api(r) for r in rows], has_more=has_more)


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve_job(job_id: str, session: ReadSessionDep) -> FineTuningJob:
    """One job, with its progress and, once it succeeded, ``fine_tuned_model`` (name@vN)."""
    return _public(session, job_id)


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(job_id: str, session: SessionDep) -> FineTuningJob:
    """Cancel: immediately if no worker holds the job, else at the worker's next training step."""
    jobs.cancel_job(session, job_id)
    return _public(session, job_id)


@router.get("/{job_id}/events", response_model=None)
def list_events(
    job_id: str,
    registry: RegistryDep,
    request: Request,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    stream: bool = False,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventList | StreamingResponse:
    """Events newest first, paged with ``after``; ``stream=true`` sends them as server-sent
    events, oldest first, until the job finishes (resume with ``Last-Event-ID``)."""
    # No request-long session here: a streaming response would hold its transaction (and, on
    # SQLite, the write lock) for as long as the client listens.
    if stream:
        with registry.read_session() as session:
            jobs.get_job(session, job_id)
        start = job_views.parse_event_id(last_event_id or after)
        return StreamingResponse(
            _event_stream(registry, job_id, start, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    with registry.read_session() as session:
        rows, has_more = jobs.list_events(
            session, job_id, after=job_views.parse_event_id(after), limit=limit
        )
        return EventList(data=[job_views.event_to_api(r) for r in rows], has_more=has_more)


async def _event_stream(
    registry: Registry, job_id: str, after: int | None, request: Request
) -> AsyncIterator[bytes]:
    def fetch(cursor: int | None) -> tuple[list[tuple[int, str]], bool]:
        with registry.read_session() as session:
            rows, _ = jobs.list_events(session, job_id, after=cursor, limit=200, newest_first=False)
            done = jobs.get_job(session, job_id).status in TERMINAL
            return [(r.id, job_views.event_to_api(r).model_dump_json()) for r in rows], done

    cursor = after
    while not await request.is_disconnected():
        batch, done = await run_in_threadpool(fetch, cursor)
        for event_id, payload in batch:
            cursor = event_id
            yield f"id: ftevent-{event_id}\nevent: event\ndata: {payload}\n\n".encode()
        if done and not batch:
            yield b"event: done\ndata: " + json.dumps({"id": job_id}).encode() + b"\n\n"
            return
        if not batch:
            await asyncio.sleep(0.5)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(
    job_id: str,
    session: ReadSessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> CheckpointList:
    """Checkpoints saved during training, newest first, with their metrics."""
    rows = jobs.list_checkpoints(session, job_id)
    data = [job_views.checkpoint_to_api(r) for r in rows]
    if after:
        ids = [c.id for c in data]
        data = data[ids.index(after) + 1 :] if after in ids else []
    page = data[:limit]
    return CheckpointList(
        data=page,
        has_more=len(data) > limit,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
    )
