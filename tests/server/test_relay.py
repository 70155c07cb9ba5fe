"""`services.server.relay`: whole events forwarded, the usage event found and stripped when asked,
and an error event when the engine fails."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from services.server.relay import Relay, take_usage
from services.server.upstream import UpstreamError


def test_usage_event_is_found_and_stripped_only_when_asked() -> None:
    block = (
        b'data: {"choices":[{"text":"a"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    kept, usage = take_usage(block, strip=True)
    assert usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert b"usage" not in kept and kept.endswith(b"data: [DONE]\n\n")
    kept, _ = take_usage(block, strip=False)
    assert kept == block


class _Pieces:
    """Stands in for an :class:`Exchange`: hands out fixed pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)
        self.closed = False

    async def read(self) -> bytes | None:
        return self.pieces.pop(0) if self.pieces else None

    def close(self) -> None:
        self.closed = True


def _relay(pieces: list[bytes], strip: bool) -> tuple[list[bytes], list[Any]]:
    finished: list[Any] = []

    async def run() -> list[bytes]:
        relay = Relay(
            _Pieces(pieces),  # type: ignore[arg-type]
            "engine-0",
            strip,
            lambda: None,
            lambda status, usage, complete: finished.append((status, usage, complete)),
        )
        out = []
        while (data := await relay.next()) is not None:
            out.append(data)
        relay.close()
        relay.close()
        return out

    return asyncio.run(run()), finished


def test_relay_forwards_whole_events_and_finds_split_usage() -> None:
    usage_event = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    pieces = [
        b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choi',
        b'ces":[{"text":"b"}]}\n\n',
        usage_event[:20],
        usage_event[20:] + b"data: [DONE]\n\n",
    ]
    out, finished = _relay(pieces, strip=True)
    assert out == [
        b'data: {"choices":[{"text":"a"}]}\n\n',
        b'data: {"choices":[{"text":"b"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert finished == [(200, {"prompt_tokens": 3, "completion_tokens": 2}, True)]
    out, finished = _relay(pieces, strip=False)
    assert b"".join(out) == b"".join(pieces)
    assert finished[0][1] == {"prompt_tokens": 3, "completion_tokens": 2}


def test_relay_ends_with_an_error_event_when_the_engine_fails() -> None:
    class Failing(_Pieces):
        async def read(self) -> bytes | None:
            if self.pieces:
                return self.pieces.pop(0)
            raise UpstreamError("engine closed the connection")

    finished: list[Any] = []

    async def run() -> list[bytes]:
        relay = Relay(
            Failing([b"data: 1\n\n"]),  # type: ignore[arg-type]
            "engine-0",
            False,
            lambda: None,
            lambda *args: finished.append(args),
        )
        out = []
        while (data := await relay.next()) is not None:
            out.append(data)
        relay.close()
        return out

    out = asyncio.run(run())
    assert out[0] == b"data: 1\n\n"
    assert json.loads(out[1][6:])["error"]["code"] == "engine_error"
    assert finished == [(502, None, False)]
