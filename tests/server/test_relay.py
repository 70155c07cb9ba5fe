"""`services.server.relay`: the usage event of a streamed answer."""

from __future__ import annotations

from services.server.relay import take_usage


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
