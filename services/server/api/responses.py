"""Responses that need more than Starlette gives: the relay of an engine's SSE stream."""

from __future__ import annotations

import contextlib

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.server.proxy import Relay


class RelayResponse(Response):
    """Streams a :class:`Relay` and stops it as soon as the client disconnects.

    Starlette's StreamingResponse (ASGI >= 2.4) only notices a disconnect at the next write, which
    for a long prefill can be many seconds; here a listener cancels the relay at once, and the relay
    closes the engine connection, which makes vLLM abort the request.
    """

    def __init__(self, relay: Relay, status_code: int, headers: dict[str, str]) -> None:
        self.relay = relay
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": self.status_code,
                            "headers": self.raw_headers,
                        }
                    )
                    async for chunk in self.relay:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            group.cancel_scope.cancel()
                            return

                group.start_soon(stream)
                group.start_soon(watch)
        except OSError:
            pass  # the client went away mid-write
        finally:
            with contextlib.suppress(Exception):
                await self.relay.aclose()
