"""What the proxy answers with: a whole :class:`Reply`, or a :class:`Relay` that forwards an
engine's event stream as it arrives; and the token usage found in either, for the metrics."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.server.upstream import Exchange, UpstreamError

log = logging.getLogger(__name__)


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    stream: Relay | None = None


class Relay:
    """An engine's SSE stream, forwarded as it arrives (whole events; pieces that end inside an
    event wait for the rest).

    ``close`` always releases the engine lease and records metrics exactly once, also when the
    client left before the first byte.
    """

    __slots__ = (
        "_ended",
        "_finished",
        "_first",
        "_pending",
        "complete",
        "engine_id",
        "exchange",
        "on_finish",
        "on_first",
        "status",
        "strip_usage",
        "usage",
    )

    def __init__(
        self,
        exchange: Exchange,
        engine_id: str,
        strip_usage: bool,
        on_first: Callable[[], None],
        on_finish: Callable[[int, dict[str, Any] | None, bool], None],
    ) -> None:
        self.exchange = exchange
        self.engine_id = engine_id
        self.strip_usage = strip_usage
        self.on_first = on_first
        self.on_finish = on_finish
        self.status = 499  # client closed the request, unless the stream ends otherwise
        self.usage: dict[str, Any] | None = None
        self.complete = False
        self._finished = False
        self._ended = False
        self._first = True
        self._pending = b""

    async def next(self) -> bytes | None:
        """The next bytes to forward, None when the stream is over."""
        if self._ended:
            return None
        while True:
            try:
                data = await self.exchange.read()
            except UpstreamError as exc:
                # The engine died mid-stream: end the stream with an error event the SDKs surface.
                self._ended = True
                self.status = 502
                log.warning("engine %s failed mid-stream: %s", self.engine_id, exc)
                return _stream_error(exc)
            if data is None:
                self._ended = True
                self.status = 200
                self.complete = True
                rest, self._pending = self._pending, b""
                return rest or None
            if self._first:
                self._first = False
                self.on_first()
            if self._pending:
                data = self._pending + data
                self._pending = b""
            if not data.endswith(b"\n\n"):
                cut = data.rfind(b"\n\n")
                if cut < 0:
                    self._pending = data
                    continue
                data, self._pending = data[: cut + 2], data[cut + 2 :]
            # vLLM sends usage only in the last event (streamed chunks omit unset fields), so
            # this finds one event per stream to parse; a plain substring search costs nothing.
            if b'"usage"' in data:
                data, found = take_usage(data, self.strip_usage)
                if found is not None:
                    self.usage = found
                if not data:
                    continue
            return data

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self.exchange.close()  # reused when complete, else dropped: vLLM aborts the request
        finally:
            self.on_finish(self.status, self.usage, self.complete)


def _stream_error(exc: Exception) -> bytes:
    error = {
        "error": {
            "message": f"engine failed mid-stream ({exc.__class__.__name__}); retry",
            "type": "server_error",
            "code": "engine_error",
            "param": None,
        }
    }
    return b"data: " + json.dumps(error).encode() + b"\n\n"


def response_usage(data: bytes, status: int) -> dict[str, Any] | None:
    """The ``usage`` of a whole (not streamed) answer, None when it failed or has none."""
    if status != 200:
        return None
    with contextlib.suppress(ValueError, AttributeError):
        usage = json.loads(data).get("usage")
        return usage if isinstance(usage, dict) else None
    return None


def take_usage(block: bytes, strip: bool) -> tuple[bytes, dict[str, Any] | None]:
    """Find the usage-only event (``"choices":[]`` with ``usage``); drop it when ``strip``."""
    kept: list[bytes] = []
    usage: dict[str, Any] | None = None
    for event in block.split(b"\n\n"):
        if not event:
            continue
        if (
            event.startswith(b"data: {")
            and b'"usage"' in event
            and not (b'"usage":null' in event and b'"usage":{' not in event)
        ):
            try:
                data = json.loads(event[6:])
            except ValueError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("usage"), dict):
                usage = data["usage"]
                if strip and not data.get("choices"):
                    continue
        kept.append(event)
    return b"".join(e + b"\n\n" for e in kept), usage
