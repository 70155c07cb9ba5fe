"""Generation: decoding settings, the per-identity answer cache, and answers through an
OpenAI-compatible server (a small stub here: it echoes the prompt, knows two models, serves only
the /v1 paths, and fails the first request of a prompt saying "flaky" with a 503). In-process
generation needs the model: the slow tests run it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.evaluator.generation import (
    DecodingSettings,
    ResponseCache,
    chat_completions,
    check_server,
    generate_server,
    message_text,
)
from shared.errors import SystemFailure, ValidationError
from tests.evaluator import planning


@pytest.fixture
def server() -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"bodies": [], "auth": [], "failed": set()}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path != "/v1/models":
                return self._send(404, {"error": self.path})
            self._send(200, {"data": [{"id": "a@v2"}, {"id": "m"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": self.path})
            state["bodies"].append(body)
            state["auth"].append(self.headers.get("Authorization"))
            prompt = body["messages"][-1]["content"]
            if body["model"] not in ("a@v2", "m"):
                return self._send(404, {"error": f"no model {body['model']}"})
            if "flaky" in prompt and prompt not in state["failed"]:
                state["failed"].add(prompt)
                return self._send(503, {"error": "busy"})
            reply = f"  {body['model']} says: {prompt}  "
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_decoding_is_greedy_at_temperature_zero() -> None:
    assert DecodingSettings().greedy
    assert not DecodingSettings(temperature=0.3).greedy
    with pytest.raises(ValueError):
        DecodingSettings(max_new_tokens=0)


def test_the_cache_keys_answers_by_prompt_in_one_file_per_identity(tmp_path: Path) -> None:
    items = planning.items(3)
    cache = ResponseCache(tmp_path / "gen", "ident-a")
    assert cache.get_many(items) == {}
    cache.put_many({ResponseCache.key(items[0]): "zero", ResponseCache.key(items[2]): "two"})
    again = ResponseCache(tmp_path / "gen", "ident-a")  # survives reopening
    assert again.get_many(items) == {
        ResponseCache.key(items[0]): "zero",
        ResponseCache.key(items[2]): "two",
    }
    assert ResponseCache(tmp_path / "gen", "ident-b").get_many(items) == {}
    assert cache.path == tmp_path / "gen" / "ident-a.sqlite"
    # The key is the prompt: another id or reference with the same prompt shares it.
    same_prompt = planning.items(1, prefix="other")[0]
    assert ResponseCache.key(same_prompt) == ResponseCache.key(items[0])
    assert ResponseCache.key(items[1]) != ResponseCache.key(items[0])


def test_message_text_reads_the_reply_or_says_it_is_malformed() -> None:
    assert message_text({"choices": [{"message": {"content": "  hi \n"}}]}) == "hi"
    assert message_text({"choices": [{"message": {"content": None}}]}) == ""
    with pytest.raises(ValidationError, match="malformed chat completion response"):
        message_text({"choices": []})


def test_generate_server_asks_the_served_name_with_the_decoding(server: dict[str, Any]) -> None:
    items = planning.items(3)
    ticks: list[int] = []
    out = generate_server(
        server["url"] + "/v1/",
        planning.CANDIDATE,
        items,
        DecodingSettings(max_new_tokens=7, seed=3),
        concurrency=2,
        api_key="secret",
        progress=ticks.append,
    )
    assert out == [f"a@v2 says: question {k}" for k in range(3)]
    assert ticks == [1, 1, 1] and server["auth"] == ["Bearer secret"] * 3
    body = server["bodies"][0]
    assert body["model"] == "a@v2" and body["max_tokens"] == 7 and body["seed"] == 3
    assert body["temperature"] == 0.0 and body["messages"][0]["role"] == "user"


def test_server_errors_are_retried_then_reported(server: dict[str, Any]) -> None:
    msgs = [[{"role": "user", "content": "flaky one"}]]
    (resp,) = chat_completions(
        server["url"], "m", msgs, DecodingSettings(), extra={"logprobs": True}
    )
    assert message_text(resp) == "m says: flaky one"
    assert len(server["bodies"]) == 2 and server["bodies"][0]["logprobs"] is True
    assert server["auth"] == [None, None]
    with pytest.raises(ValidationError, match="answered 404 for model 'ghost'"):
        chat_completions(server["url"], "ghost", msgs, DecodingSettings())


def test_check_server_lists_models_or_fails_clearly(server: dict[str, Any]) -> None:
    assert check_server(server["url"]) == ["a@v2", "m"]
    assert check_server(server["url"] + "/v1") == ["a@v2", "m"]
    with pytest.raises(SystemFailure, match=r"cannot reach the server at http://127\.0\.0\.1:9"):
        check_server("http://127.0.0.1:9", timeout=1.0)
