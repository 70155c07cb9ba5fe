"""The proxied routes as plain ASGI: what every request and every streamed chunk goes through.

FastAPI's routing, dependency injection and middleware cost more per request than the hop itself,
and on a CPU machine every cycle here is taken from the engine, so the proxied routes
(:mod:`services.server.routes`) are served by :func:`serve_proxied` straight from the application's
``__call__`` (see ``app.py``). The FastAPI routes stay (OpenAPI schema, and a fallback) and run
the same function.

One task per request watches for the client leaving; when it does, the request's own task is
cancelled, which closes the engine connection, and vLLM aborts the request. Starlette's
StreamingResponse would notice only at its next write, many seconds later during a long prefill.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from services.server.errors import TooLarge, Unavailable
from services.server.relay import Reply
from services.server.routes import ProxiedRoute
from services.server.service import ServerService
from shared.errors import LoraplexError, SystemFailure
from shared.http import error_response_parts

log = logging.getLogger(__name__)

JSON_TYPE = (b"content-type", b"application/json")


def error_reply(exc: LoraplexError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The suite's one error mapping (:func:`shared.http.error_response_parts`) for the raw-ASGI
    proxy path; our own failures are logged here, where the request is known to have failed."""
    if exc.status_code >= 500 and not isinstance(exc, Unavailable):
        log.error("request failed: %s", exc)
    return error_response_parts(exc)


async def _send_whole(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Watch:
    """Cancels the request's task when the client disconnects, until ``done``."""

    __slots__ = ("done", "gone", "task")

    def __init__(self, receive: Receive) -> None:
        self.done = False
        self.gone = False
        owner = asyncio.current_task()
        assert owner is not None
        self.task = asyncio.get_running_loop().create_task(self._run(receive, owner))

    async def _run(self, receive: Receive, owner: asyncio.Task[object]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if not self.done:
            self.gone = True
            owner.cancel()

    def stop(self) -> None:
        self.done = True
        self.task.cancel()


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, None when the client left while sending it."""
    chunks = []
    size = 0
    more = True
    while more:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        if body:
            size += len(body)
            if size > limit:
                raise TooLarge(f"request body above the limit of {limit} bytes", param="body")
            chunks.append(body)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def serve_proxied(
    service: ServerService, route: ProxiedRoute, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer one request to a proxied ``route`` over raw ASGI."""
    authorization = None
    limit = service.settings.max_body_bytes
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-length" and value.isdigit() and int(value) > limit:
            exc = TooLarge(
                f"request body of {int(value)} bytes is above the limit of {limit}", param="body"
            )
            await _send_whole(send, *error_reply(exc))
            return
    try:
        raw = await _read_body(receive, limit)
    except LoraplexError as exc:
        await _send_whole(send, *error_reply(exc))
        return
    if raw is None:
        return
    watch = _Watch(receive)
    reply: Reply | None = None
    started = False
    try:
        try:
            reply = await service.proxy.handle(route, raw, authorization)
        except LoraplexError as exc:
            watch.done = True
            await _send_whole(send, *error_reply(exc))
            return
        relay = reply.stream
        if relay is None:
            watch.done = True
            await _send_whole(send, reply.status, reply.headers, reply.body)
            return
        started = True
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": reply.headers}
        )
        while (data := await relay.next()) is not None:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        watch.done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not watch.gone:
            raise  # the server is shutting down
        # The client left: nothing to answer. The relay's close drops the engine connection.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    except Exception:
        log.exception("proxied request failed")
        if not started and not watch.gone:
            failure = SystemFailure(
                "internal error while proxying the request", code="internal_error"
            )
            await _send_whole(send, *error_reply(failure))
    finally:
        watch.stop()
        if reply is not None and reply.stream is not None:
            reply.stream.close()


class ProxiedResponse(Response):
    """For the FastAPI routes: runs :func:`serve_proxied` with the request's own receive/send."""

    def __init__(self, service: ServerService, route: ProxiedRoute) -> None:
        self.service = service
        self.route = route
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_proxied(self.service, self.route, scope, receive, send)
