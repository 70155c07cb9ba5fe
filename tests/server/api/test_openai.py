"""`services.server.api.openai`: the listing endpoints answer OpenAI-style JSON lists."""

from __future__ import annotations

import json

import pytest

from tests.server.conftest import Stack


@pytest.mark.parametrize("path", ["/v1/adapters", "/v1/models"])
def test_listing_endpoints_answer_json(stack: Stack, path: str) -> None:
    with stack.client() as c:
        r = c.get(path)
    assert r.status_code == 200
    assert json.loads(r.text)["object"] == "list"
