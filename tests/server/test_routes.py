"""The table of proxied OpenAI routes (``services/server/routes.py``) is complete.

Every entry has every piece; the app mounts every entry three ways (raw-ASGI dispatch, guard rule,
FastAPI route in the OpenAPI schema); every proxied route the app mounts has an entry. The control
cases show each check reports a deliberately broken entry or app.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from services.server.api.app import ServerApp, create_app
from services.server.config import ServerSettings
from services.server.routes import (
    BY_NAME,
    BY_PATH,
    COMPLETIONS,
    PROXIED_ROUTES,
    LogprobsKind,
    ProxiedRoute,
)
from shared.auth import SCOPES

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def missing_pieces(route: ProxiedRoute) -> list[str]:
    """The pieces of ``route`` that are absent or malformed (empty: complete)."""
    missing = [
        f.name for f in dataclasses.fields(route) if getattr(route, f.name) in ("", None, {})
    ]
    if not route.path.startswith("/v1/") and "path" not in missing:
        missing.append("path")
    if not route.upstream_path.startswith("/v1/") and "upstream_path" not in missing:
        missing.append("upstream_path")
    if route.method not in HTTP_METHODS and "method" not in missing:
        missing.append("method")
    if route.scope not in SCOPES and "scope" not in missing:
        missing.append("scope")
    if not route.handler.isidentifier() and "handler" not in missing:
        missing.append("handler")
    if route.logprobs not in typing.get_args(LogprobsKind) and "logprobs" not in missing:
        missing.append("logprobs")
    body = route.request_body.get("requestBody", {})
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    # The proxy reads ``model`` from every body; the schema must say so.
    if "model" not in schema.get("required", []) and "request_body" not in missing:
        missing.append("request_body")
    return missing


def unmounted(
    app: ServerApp, settings: ServerSettings, routes: tuple[ProxiedRoute, ...]
) -> list[str]:
    """What each entry lacks on ``app``: raw dispatch, guard rule, FastAPI route, OpenAPI entry."""
    api = {
        (method, r.path): r for r in app.routes if isinstance(r, APIRoute) for method in r.methods
    }
    paths = app.openapi()["paths"]
    assert app.guard is not None
    problems = []
    for route in routes:
        key = (route.method, route.path)
        if BY_PATH.get(key) is not route:
            problems.append(f"{route.name}: not dispatched")
        rule = app.guard.match(route.method, route.path)
        if (
            rule is None
            or rule.scopes is None
            or route.scope not in rule.scopes
            or rule.max_body != settings.max_body_bytes
        ):
            problems.append(f"{route.name}: no guard rule")
        mounted = api.get(key)
        if mounted is None or mounted.name != route.handler:
            problems.append(f"{route.name}: no FastAPI route")
        operation = paths.get(route.path, {}).get(route.method.lower())
        if (
            operation is None
            or operation.get("summary") != route.summary
            or operation.get("requestBody") != route.request_body["requestBody"]
        ):
            problems.append(f"{route.name}: not in the OpenAPI schema")
    return problems


def unlisted(app: FastAPI, routes: tuple[ProxiedRoute, ...]) -> list[str]:
    """Proxied routes ``app`` mounts without an entry: the server's own ``/v1`` routes only read
    (GET), so any other method under ``/v1`` is an OpenAI call forwarded to an engine."""
    listed = {(r.method, r.path) for r in routes}
    return sorted(
        f"{method} {r.path}"
        for r in app.routes
        if isinstance(r, APIRoute) and r.path.startswith("/v1/")
        for method in r.methods - {"GET", "HEAD"}
        if (method, r.path) not in listed
    )


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(
        data_dir=tmp_path, admin_key="admin-key-0123456789", engine_urls=["http://127.0.0.1:1"]
    )


@pytest.mark.parametrize("route", PROXIED_ROUTES, ids=lambda r: r.name)
def test_every_entry_has_every_piece(route: ProxiedRoute) -> None:
    assert missing_pieces(route) == []
    assert BY_NAME[route.name] is route


def test_names_and_paths_are_unique() -> None:
    assert len(BY_NAME) == len(BY_PATH) == len(PROXIED_ROUTES)


def test_every_entry_is_mounted_and_every_proxied_route_has_one(settings: ServerSettings) -> None:
    app = create_app(settings)
    assert unmounted(app, settings, PROXIED_ROUTES) == []
    assert unlisted(app, PROXIED_ROUTES) == []


# -- control cases: the checks can fail ----------------------------------------------------------
def test_an_incomplete_entry_is_reported() -> None:
    broken = dataclasses.replace(
        COMPLETIONS,
        summary="",
        request_body={},
        scope="inference",
        logprobs=typing.cast(LogprobsKind, "some"),
    )
    assert missing_pieces(broken) == ["summary", "request_body", "scope", "logprobs"]


def test_an_unmounted_entry_is_reported(settings: ServerSettings) -> None:
    extra = dataclasses.replace(
        COMPLETIONS,
        name="embeddings",
        path="/v1/embeddings",
        upstream_path="/v1/embeddings",
        handler="embeddings",
    )
    assert missing_pieces(extra) == []
    assert unmounted(create_app(settings), settings, (*PROXIED_ROUTES, extra)) == [
        "embeddings: not dispatched",
        "embeddings: no guard rule",
        "embeddings: no FastAPI route",
        "embeddings: not in the OpenAPI schema",
    ]


def test_a_proxied_route_without_an_entry_is_reported(settings: ServerSettings) -> None:
    app = create_app(settings)

    @app.post("/v1/embeddings")
    async def embeddings() -> None: ...

    assert unlisted(app, PROXIED_ROUTES) == ["POST /v1/embeddings"]
    assert unlisted(app, tuple(r for r in PROXIED_ROUTES if r is not COMPLETIONS)) == [
        "POST /v1/completions",
        "POST /v1/embeddings",
    ]
