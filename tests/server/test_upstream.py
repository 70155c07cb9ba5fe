"""The lean engine client (services/server/upstream.py) and the SSE relay, against raw sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import pytest

from services.server.upstream import EnginePool, UpstreamError, UpstreamTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP request's body (None when the client closed the connection)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


class Server:
    """A raw HTTP server on a free port; ``handler`` gets each connection and its number."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer, self.connections)
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()


def _whole(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_answers_are_read_and_connections_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (body := await _read_request(reader)) is not None:
            writer.write(_whole(b'{"echo":' + body + b"}"))
            await writer.drain()

    async def run() -> int:
        server = Server(handler)
        async with server as url:
            pool = EnginePool(url, timeout=5)
            for i in range(3):
                exchange = await pool.post_json("/v1/completions", b'{"n":%d}' % i)
                assert exchange.status == 200
                assert exchange.content_type == b"application/json"
                assert json.loads(await exchange.read_all()) == {"echo": {"n": i}}
                exchange.close()
            pool.close()
        return server.connections

    assert asyncio.run(run()) == 1


def test_a_reused_connection_the_engine_closed_is_replaced_once() -> None:
    """An engine closing a keep-alive connection as the next request arrives (its idle timeout)
    must not fail the request: the engine never saw it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        body = await _read_request(reader)
        assert body is not None
        writer.write(_whole(b"{}"))
        await writer.drain()
        await _read_request(reader)  # the second request on this connection: hang up unanswered

    async def run() -> int:
        server = Server(handler)
        async with server as url:
            pool = EnginePool(url, timeout=5)
            for _ in range(3):
                exchange = await pool.post_json("/v1/completions", b"{}")
                assert await exchange.read_all() == b"{}"
                exchange.close()
            pool.close()
        return server.connections

    assert asyncio.run(run()) == 3


def test_streams_arrive_piece_by_piece_and_end() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + _chunk(b"data: 1\n\n")
        )
        await writer.drain()
        await release.wait()
        writer.write(_chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await writer.drain()
        await _read_request(reader)

    async def run() -> None:
        async with Server(handler) as url:
            pool = EnginePool(url, timeout=5)
            exchange = await pool.post_json("/v1/completions", b"{}")
            assert exchange.content_type == b"text/event-stream"
            assert await exchange.read() == b"data: 1\n\n"  # before the rest exists
            release.set()
            assert await exchange.read() == b"data: 2\n\n"
            assert await exchange.read() is None
            assert exchange.complete
            exchange.close()
            pool.close()

    asyncio.run(run())


def test_a_silent_engine_times_out_and_a_dead_one_fails() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + _chunk(b"data: 1\n\n")
        )
        await writer.drain()
        await asyncio.sleep(30)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await _read_request(reader)

    async def run() -> None:
        async with Server(stall) as url:
            pool = EnginePool(url, timeout=0.2)
            exchange = await pool.post_json("/v1/completions", b"{}")
            assert await exchange.read() == b"data: 1\n\n"
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await exchange.read()
            assert time.monotonic() - started < 1.5
            exchange.close()
        async with Server(hang_up) as url:
            with pytest.raises(UpstreamError):
                await EnginePool(url, timeout=5).post_json("/v1/completions", b"{}")
        with pytest.raises(UpstreamError):
            await EnginePool(url, timeout=5).post_json("/v1/completions", b"{}")  # nobody there

    asyncio.run(run())
