"""The proxied OpenAI routes, one entry each: everything the server decides per route.

The app reads this table three times (the raw-ASGI dispatch in ``api/app.py``, the guard rule that
checks the key and caps the body, the FastAPI route in ``api/openai.py`` that documents it in the
OpenAPI schema) and the proxy reads it for each request (field checks, whether the engine must run
the request alone, vLLM's path, the ``endpoint`` label of the request metrics). Every proxied
route takes an engine lease (and an adapter's, when the model names one), so that is not a
column. A new proxied route is one entry here; ``tests/server/test_routes_table.py`` fails when an
entry lacks a piece or the app does not mount it. (:mod:`services.server.routing` is another
thing: it picks the engine for a request.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

LogprobsKind = Literal["flag", "count"]


@dataclass(frozen=True)
class ProxiedRoute:
    """One OpenAI route served by forwarding the request to an engine."""

    name: str
    """Short name: the ``endpoint`` label of the request metrics."""
    path: str
    """The public path, on this server."""
    method: str
    scope: str
    """The key scope it needs (:mod:`shared.auth`)."""
    upstream_path: str
    """vLLM's path for it, on the engine."""
    handler: str
    """The FastAPI function's name, which makes its OpenAPI ``operationId``."""
    summary: str
    """Its OpenAPI summary."""
    request_body: dict[str, Any]
    """Its OpenAPI ``requestBody`` (``openapi_extra``): the body is read raw, not by a model."""
    logprobs: LogprobsKind
    """How the request's ``logprobs`` field reads: ``flag`` (chat: true or false) or ``count``
    (completions: how many candidates per token)."""
    echo_scores_prompt: bool
    """Whether ``echo`` with ``logprobs`` makes the engine score the prompt tokens, which an engine
    without the plugin must run alone (see :mod:`services.server.isolation`)."""


def _body_schema(required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": required,
                        "properties": props,
                        "additionalProperties": True,
                    }
                }
            },
        }
    }


_COMMON = {
    "model": {"type": "string", "description": "Base model, name@vN, name:alias or name."},
    "stream": {"type": "boolean"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0},
}

CHAT = ProxiedRoute(
    name="chat",
    path="/v1/chat/completions",
    method="POST",
    scope="infer",
    upstream_path="/v1/chat/completions",
    handler="chat_completions",
    summary="Chat completion (OpenAI), from the base model, an adapter version or an alias.",
    request_body=_body_schema(
        ["model", "messages"],
        _COMMON
        | {
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
                },
            }
        },
    ),
    logprobs="flag",
    echo_scores_prompt=False,
)

COMPLETIONS = ProxiedRoute(
    name="completions",
    path="/v1/completions",
    method="POST",
    scope="infer",
    upstream_path="/v1/completions",
    handler="completions",
    summary="Text completion (OpenAI), including echo with prompt log-probabilities.",
    request_body=_body_schema(
        ["model", "prompt"],
        _COMMON
        | {
            "prompt": {"type": "string"},
            "echo": {"type": "boolean"},
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        },
    ),
    logprobs="count",
    echo_scores_prompt=True,
)

PROXIED_ROUTES: tuple[ProxiedRoute, ...] = (CHAT, COMPLETIONS)
BY_NAME: dict[str, ProxiedRoute] = {route.name: route for route in PROXIED_ROUTES}
BY_PATH: dict[tuple[str, str], ProxiedRoute] = {
    (route.method, route.path): route for route in PROXIED_ROUTES
}
