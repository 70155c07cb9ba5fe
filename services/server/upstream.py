"""A lean HTTP/1.1 client for the proxied requests to the engines (the hot path).

Every token of every stream crosses this hop, and on a CPU machine each cycle spent here is taken
from the engine, so it does less than a general client (aiohttp, which the rest of the server
uses): one write per request, httptools (C) to parse the answer, body pieces handed over as they
arrive with one future per wait, no timer rescheduled per chunk (an inactivity watchdog checks a
counter once per timeout period instead), keep-alive connections reused last-in first-out.

Closing a connection before its answer is complete is how a request is cancelled: vLLM aborts a
request whose client connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from typing import cast
from urllib.parse import urlsplit

import httptools

# vLLM (uvicorn) closes idle keep-alive connections after 5 s: reuse ours for less than that, so
# a request is not written into a connection the engine is closing.
IDLE_TIMEOUT_S = 4.0
MAX_IDLE = 256
# Stop reading from the engine while this much is waiting for a slow client (TCP backpressure).
HIGH_WATER = 1 << 20


class UpstreamError(Exception):
    """The engine connection failed, closed, answered garbage or went silent."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """Nothing arrived from the engine for a whole timeout period."""


class Connection(asyncio.Protocol):
    """One keep-alive connection to an engine, carrying one request at a time."""

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.content_type = b""
        self.headers_done = False
        self.complete = False
        self.failure: UpstreamError | None = None
        self.pieces: list[bytes] = []
        self.buffered = 0
        self.received = 0
        self.keep_alive = False
        self._framed = False
        self._header = b""
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received += 1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"engine sent an invalid HTTP answer: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headers_done and not self._framed and not self.complete:
            self.complete = True  # an answer delimited by the connection's end
        elif not self.complete:
            self._fail(UpstreamError(f"engine closed the connection ({exc!r})"))
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self.content_type = value
        elif name in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- use -------------------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes) -> None:
        self._reset()
        assert self.transport is not None
        self.transport.write(head + body)

    async def wait_headers(self) -> None:
        while not self.headers_done:
            if self.failure is not None:
                raise self.failure
            await self._wait()

    async def read(self) -> bytes | None:
        """What has arrived since the last call (waiting for something), None at the end."""
        while True:
            pieces = self.pieces
            if pieces:
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                self.pieces = []
                self.buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return None
            if self.failure is not None:
                raise self.failure
            await self._wait()

    async def read_all(self) -> bytes:
        chunks = []
        while (data := await self.read()) is not None:
            chunks.append(data)
        return b"".join(chunks)

    def abort(self) -> None:
        """Drop the connection (the engine aborts the request it carried)."""
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def release(self) -> None:
        """Back to the pool when the answer was read to its end, else dropped."""
        if self.complete and self.keep_alive and not self.lost and not self.pieces:
            self.pool.put(self)
        else:
            self.abort()

    def timed_out(self) -> None:
        self._fail(UpstreamTimeout(f"engine {self.pool.url} sent nothing for {self.pool.timeout}s"))
        self.abort()

    def _fail(self, failure: UpstreamError) -> None:
        if self.failure is None:
            self.failure = failure
        self._wake()

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Watchdog:
    """Fails a request that receives nothing for ``timeout`` seconds: one timer per period, not
    one reschedule per chunk."""

    __slots__ = ("conn", "handle", "seen", "timeout")

    def __init__(self, conn: Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.seen = conn.received
        self.handle = asyncio.get_running_loop().call_later(timeout, self._check)

    def _check(self) -> None:
        conn = self.conn
        if conn.complete or conn.lost:
            return
        if conn.received == self.seen:
            conn.timed_out()
            return
        self.seen = conn.received
        self.handle = asyncio.get_running_loop().call_later(self.timeout, self._check)

    def cancel(self) -> None:
        self.handle.cancel()


class Exchange:
    """One request on one connection: headers received; read the body, then ``close``."""

    __slots__ = ("conn", "watchdog")

    def __init__(self, conn: Connection, watchdog: _Watchdog) -> None:
        self.conn = conn
        self.watchdog = watchdog

    @property
    def status(self) -> int:
        return self.conn.status

    @property
    def content_type(self) -> bytes:
        return self.conn.content_type

    async def read(self) -> bytes | None:
        return await self.conn.read()

    async def read_all(self) -> bytes:
        return await self.conn.read_all()

    @property
    def complete(self) -> bool:
        return self.conn.complete

    def close(self) -> None:
        """Reuse the connection if the answer is complete; otherwise drop it (vLLM aborts)."""
        self.watchdog.cancel()
        self.conn.release()


class EnginePool:
    """Keep-alive connections to one engine."""

    def __init__(self, url: str, *, timeout: float, connect_timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self.port = parts.port or (443 if self.ssl else 80)
        self.prefix = parts.path.rstrip("/").encode()
        netloc = parts.netloc.rsplit("@", 1)[-1]
        self._host_header = netloc.encode("idna")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._idle: list[Connection] = []

    async def post_json(self, path: str, body: bytes) -> Exchange:
        """POST ``body`` and wait for the answer's headers. A reused connection that turns out to
        be closed before any answer byte is replaced once (the engine never saw the request)."""
        head = (
            b"POST %s%s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n"
            % (self.prefix, path.encode(), self._host_header, len(body))
        )
        for attempt in range(2):
            conn, reused = self._take()
            if conn is None:
                conn = await self._connect()
            watchdog = None
            try:
                try:
                    conn.send(head, body)
                except (OSError, RuntimeError) as exc:  # closed under us (uvloop: RuntimeError)
                    raise UpstreamError(f"engine {self.url} closed the connection") from exc
                watchdog = _Watchdog(conn, self.timeout)
                await conn.wait_headers()
            except UpstreamError as exc:
                if watchdog is not None:
                    watchdog.cancel()
                conn.abort()
                stale = reused and conn.received == 0 and not isinstance(exc, UpstreamTimeout)
                if stale and attempt == 0:
                    continue
                raise
            except BaseException:
                if watchdog is not None:
                    watchdog.cancel()
                conn.abort()
                raise
            return Exchange(conn, watchdog)
        raise AssertionError("unreachable")

    def _take(self) -> tuple[Connection | None, bool]:
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if (
                conn.lost
                or transport is None
                or transport.is_closing()
                or now - conn.idle_since > IDLE_TIMEOUT_S
            ):
                conn.abort()
                continue
            return conn, True
        return None, False

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to engine {self.url}: {exc!r}") from exc
        return conn

    def put(self, conn: Connection) -> None:
        if len(self._idle) >= MAX_IDLE:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()
