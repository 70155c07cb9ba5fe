"""`services.server.request_checks`: which requests need prompt logprobs."""

from __future__ import annotations

from services.server.request_checks import needs_prompt_logprobs
from services.server.routes import CHAT, COMPLETIONS


def test_prompt_logprob_detection() -> None:
    assert needs_prompt_logprobs(COMPLETIONS, {"echo": True, "logprobs": 0})
    assert not needs_prompt_logprobs(COMPLETIONS, {"echo": True})
    assert not needs_prompt_logprobs(COMPLETIONS, {"logprobs": 1})
    assert needs_prompt_logprobs(CHAT, {"prompt_logprobs": 1})
    assert not needs_prompt_logprobs(CHAT, {"logprobs": True, "top_logprobs": 2})
