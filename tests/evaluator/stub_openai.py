"""A tiny OpenAI-compatible chat server for judge tests (no model): ``first`` always prefers
answer A (a position-biased judge); ``fair`` prefers the answer sharing more words with the request;
``mumble`` is ``fair`` but answers off-format (no rating, no verdict) on some requests: rubric
requests mentioning Oslo or Lyon, pairwise requests (anchors included) mentioning Oslo.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def fair_verdict(prompt: str) -> str:
    request = prompt.split("[Request]", 1)[1].split("[", 1)[0]
    a = prompt.split("[Answer A]", 1)[1].split("[Answer B]", 1)[0]
    b = prompt.split("[Answer B]", 1)[1].split("Reply with", 1)[0]
    wa, wb, wr = _words(a), _words(b), _words(request)
    sa, sb = len(wa & wr), len(wb & wr)
    return "[[A]]" if sa > sb else "[[B]]" if sb > sa else "[[C]]"


OFF_FORMAT = "I have looked at this carefully and it is a matter of taste."


def reply(mode: str, prompt: str) -> str:
    request = prompt.split("[Request]", 1)[1].split("[", 1)[0]
    if "[Answer A]" not in prompt:
        if mode == "mumble" and ("Oslo" in request or "Lyon" in request):
            return OFF_FORMAT
        return "Solid answer. Rating: [[7]]"
    if mode == "mumble" and "Oslo" in request:
        return OFF_FORMAT
    if mode == "first":
        return "Answer A is clearly better. [[A]]"
    return f"Judged on the request. {fair_verdict(prompt)}"


@contextmanager
def stub_server(mode: str) -> Iterator[str]:
    calls: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send({"object": "list", "data": [{"id": "judge", "object": "model"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body)
            prompt = body["messages"][-1]["content"]
            self._send(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": reply(mode, prompt)},
                        }
                    ],
                }
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
