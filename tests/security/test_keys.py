"""Scoped keys on the three services: each test performs the attack and asserts it fails.

The trainer and evaluator run in-process (TestClient); the server runs in a thread in front of a
fake engine (tests/server/conftest.py). The same key configuration is given to all three.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from services.evaluator.api.app import create_app as evaluator_app
from services.evaluator.config import EvaluatorSettings
from services.trainer.api.app import create_app as trainer_app
from services.trainer.config import TrainerSettings
from shared.auth import Guard, KeyRing, KeySpec, Principal, check_bind, rule
from shared.errors import ConfigError
from shared.settings import SharedSettings, check_environment, load_settings
from tests.server.conftest import build_stack, stop_stack

KEYS: list[dict[str, Any]] = [
    {"name": "admin", "key": "sk-admin-0123456789", "scopes": ["admin"]},
    {"name": "tenant", "key": "sk-tenant-012345678", "scopes": ["infer"], "adapters": ["bot*"]},
    {"name": "trainer", "key": "sk-trainer-01234567", "scopes": ["train", "read"]},
    {"name": "ci", "key": "sk-ci-0123456789abc", "scopes": ["evaluate", "read"]},
    {"name": "scraper", "key": "sk-metrics-01234567", "scopes": ["metrics"]},
]


def bearer(name: str) -> dict[str, str]:
    key = next(k["key"] for k in KEYS if k["name"] == name)
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def trainer(settings: SharedSettings) -> Iterator[TestClient]:
    app = trainer_app(TrainerSettings(data_dir=settings.data_dir, keys=KEYS))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def evaluator(settings: SharedSettings) -> Iterator[TestClient]:
    app = evaluator_app(EvaluatorSettings(data_dir=settings.data_dir, keys=KEYS))
    with TestClient(app) as client:
        yield client


TRAINER_ROUTES = [
    ("GET", "/v1/files"),
    ("GET", "/v1/files/file-abc"),
    ("GET", "/v1/files/file-abc/content"),
    ("POST", "/v1/files"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-x"),
    ("POST", "/v1/fine_tuning/jobs/ftjob-x/cancel"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/route"),
]
EVALUATOR_ROUTES = [
    ("POST", "/v1/evaluations"),
    ("GET", "/v1/evaluations"),
    ("GET", "/v1/evaluations/eval-x"),
    ("GET", "/v1/evaluations/eval-x/report"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),
]


@pytest.mark.parametrize(("method", "path"), TRAINER_ROUTES)
def test_trainer_routes_need_a_key(trainer: TestClient, method: str, path: str) -> None:
    for headers in ({}, {"authorization": "Bearer sk-wrong-0123456789"}, {"authorization": "x"}):
        r = trainer.request(method, path, headers=headers, json={"model": "x"})
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert trainer.get("/health").status_code == 200


@pytest.mark.parametrize(("method", "path"), EVALUATOR_ROUTES)
def test_evaluator_routes_need_a_key(evaluator: TestClient, method: str, path: str) -> None:
    r = evaluator.request(method, path, json={"candidate": "bot@v1"})
    assert r.status_code == 401, (method, path, r.text)
    assert evaluator.get("/health").status_code == 200


def test_scopes_are_enforced_per_route(trainer: TestClient, evaluator: TestClient) -> None:
    # A tenant's inference key can neither train nor read jobs nor evaluate.
    assert trainer.get("/v1/fine_tuning/jobs", headers=bearer("tenant")).status_code == 403
    assert (
        trainer.post("/v1/fine_tuning/jobs", headers=bearer("tenant"), json={}).status_code == 403
    )
    assert evaluator.post("/v1/evaluations", headers=bearer("tenant"), json={}).status_code == 403
    # A trainer-only key cannot evaluate, nor register a gate policy.
    assert evaluator.post("/v1/evaluations", headers=bearer("trainer"), json={}).status_code == 403
    assert evaluator.post("/v1/policies", headers=bearer("ci"), json={}).status_code == 403
    # The metrics key reads /metrics and nothing else.
    assert trainer.get("/metrics", headers=bearer("scraper")).status_code == 200
    assert trainer.get("/v1/files", headers=bearer("scraper")).status_code == 403
    # The right scope passes the guard (and then meets the route's own validation).
    assert trainer.get("/v1/fine_tuning/jobs", headers=bearer("trainer")).status_code == 200
    assert evaluator.get("/v1/evaluations", headers=bearer("ci")).status_code == 200
    assert evaluator.get("/v1/evaluations", headers=bearer("admin")).status_code == 200


def test_the_key_is_checked_before_the_body_is_read() -> None:
    reads: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never runs
        raise AssertionError("the app must not run")

    guard = Guard(
        KeyRing.from_specs([KeySpec.model_validate(k) for k in KEYS]),
        [rule("POST", r"/v1/evaluations", "evaluate")],
        max_body=1024,
        max_concurrent=4,
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 10_000_000, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/evaluations", "headers": []}
    anyio.run(guard, scope, receive, send, app)
    assert sent[0]["status"] == 401
    assert reads == []  # not one byte of the body was read


def test_oversize_bodies_are_refused_while_streaming(evaluator: TestClient) -> None:
    big = b'{"candidate": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    # With a Content-Length: refused before reading.
    r = evaluator.post("/v1/evaluations", headers=bearer("admin"), content=big)
    assert r.status_code == 413

    # Chunked, no Content-Length: refused once the cap is crossed.
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = evaluator.post("/v1/evaluations", headers=bearer("admin"), content=chunks())
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert evaluator.get("/v1/evaluations", headers=bearer("admin")).json()["data"] == []


def test_deeply_nested_bodies_are_a_400_not_a_crash(
    trainer: TestClient, evaluator: TestClient
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for client, path in ((trainer, "/v1/fine_tuning/jobs"), (evaluator, "/v1/evaluations")):
        r = client.post(
            path,
            headers={**bearer("admin"), "content-type": "application/json"},
            content=deep,
        )
        assert r.status_code in (400, 413, 422), r.text
        assert r.status_code < 500


def test_too_many_requests_per_key_get_429_with_retry_after() -> None:
    started = anyio.Event()
    release = anyio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = Guard(
        KeyRing([("sk-a-0123456789abcdef", Principal("a", frozenset({"infer"})))]),
        [rule("POST", r"/x", "infer")],
        max_body=1024,
        max_concurrent=1,
        retry_after_s=3,
    )
    headers = [(b"authorization", b"Bearer sk-a-0123456789abcdef")]
    statuses: list[int] = []
    retry: list[bytes] = []

    async def call() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
                retry.extend(v for k, v in message["headers"] if k == b"retry-after")

        scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
        await guard(scope, receive, send, slow_app)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await started.wait()
            await call()  # the second concurrent request of the same key
            release.set()
        await call()  # after the first finished, the key has room again (the slot came back)

    anyio.run(main)
    assert statuses == [429, 200, 200]
    assert retry == [b"3"]


def test_no_keys_binds_loopback_only() -> None:
    open_ring = KeyRing([])
    check_bind("trainer", "127.0.0.1", open_ring)
    check_bind("trainer", "::1", open_ring)
    for host in ("0.0.0.0", "10.0.0.5", "::", "example.com"):
        with pytest.raises(ConfigError, match="LORAPLEX_KEYS"):
            check_bind("trainer", host, open_ring)
    keyed = KeyRing([("sk-a-0123456789abcdef", Principal("a", frozenset({"infer"})))])
    check_bind("trainer", "0.0.0.0", keyed)


def test_a_mistyped_key_variable_stops_start_up(
    settings: SharedSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLEX_KEY", json.dumps(KEYS))  # the typo: LORAPLEX_KEYS was meant
    with pytest.raises(ConfigError) as info:
        load_settings(TrainerSettings)
    assert "LORAPLEX_KEY " in str(info.value) or "LORAPLEX_KEY is" in str(info.value)
    assert "did you mean LORAPLEX_KEYS?" in str(info.value)
    monkeypatch.delenv("LORAPLEX_KEY")
    monkeypatch.setenv("LORAPLEX_KEYS", json.dumps(KEYS))
    assert load_settings(TrainerSettings).keyring().enabled
    # The server's variables are valid in the trainer's process: one environment, three services.
    check_environment({"LORAPLEX_ENGINE_COUNT": "2", "LORAPLEX_SERVER_URL": "x"}, TrainerSettings)


def test_bad_key_configuration_is_refused(tmp_path: Path, settings: SharedSettings) -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        load_settings(TrainerSettings, keys=[{"name": "a", "key": "short", "scopes": ["train"]}])
    with pytest.raises(ConfigError):
        load_settings(TrainerSettings, keys=[{"name": "a", "key": "x" * 20, "scopes": ["root"]}])
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([*KEYS, KEYS[0]]))
    with pytest.raises(ConfigError, match="unique"):
        load_settings(TrainerSettings, keys_file=path).keyring()
    path.write_text(json.dumps(KEYS))
    assert load_settings(TrainerSettings, keys_file=path).keyring().enabled


def test_server_routes_need_scoped_keys(tmp_path: Path) -> None:
    s = build_stack(tmp_path, engines=1, admin_key=None, keys=KEYS)
    try:
        s.wait_ready()
        bot = s.register(s.adapter(), "bot")
        other = s.register(s.adapter(), "other")
        with s.client(auth=False) as c:
            assert c.get("/health").status_code == 200
            body = {"model": bot, "prompt": "x", "max_tokens": 2}
            assert c.post("/v1/completions", json=body).status_code == 401
            assert c.get("/v1/models").status_code == 401
            assert c.get("/metrics").status_code == 401
            assert c.post("/admin/reconcile").status_code == 401
            tenant = bearer("tenant")
            assert c.post("/v1/completions", json=body, headers=tenant).status_code == 200
            body["model"] = other
            assert c.post("/v1/completions", json=body, headers=tenant).status_code == 403
            assert c.post("/admin/reconcile", headers=tenant).status_code == 403
            assert c.get("/metrics", headers=tenant).status_code == 403
            assert c.get("/metrics", headers=bearer("scraper")).status_code == 200
            # The trainer's key cannot serve traffic.
            assert (
                c.post("/v1/completions", json=body, headers=bearer("trainer")).status_code == 403
            )
            assert c.post("/admin/reconcile", headers=bearer("admin")).status_code == 200
            # Over the body cap without a key: 401, the body never read; with a key: 413.
            big = b"x" * (s.settings.max_body_bytes + 1)
            assert c.post("/v1/completions", content=big).status_code == 401
            r = c.post("/v1/completions", content=big, headers=tenant)
            assert r.status_code == 413
    finally:
        stop_stack(s)


def test_a_training_key_adds_versions_only_to_its_adapter_names(settings: SharedSettings) -> None:
    keys = [
        *KEYS,
        {"name": "bots", "key": "sk-bots-0123456789ab", "scopes": ["train"], "adapters": ["bot-*"]},
    ]
    app = trainer_app(TrainerSettings(data_dir=settings.data_dir, keys=keys))
    headers = {"authorization": "Bearer sk-bots-0123456789ab"}
    body = {"training_file": "file-missing", "model": "smollm2-135m-instruct"}
    with TestClient(app) as client:
        r = client.post(
            "/v1/fine_tuning/jobs", headers=headers, json={**body, "suffix": "support-bot"}
        )
        assert r.status_code == 403 and "support-bot" in r.json()["error"]["message"]
        r = client.post(
            "/v1/fine_tuning/jobs",
            headers=headers,
            json={**body, "suffix": "bot-a", "base_adapter": "support-bot:prod"},
        )
        assert r.status_code == 403 and "support-bot" in r.json()["error"]["message"]
        # Its own name gets past the key check (and then fails on the missing file, a 4xx).
        r = client.post("/v1/fine_tuning/jobs", headers=headers, json={**body, "suffix": "bot-a"})
        assert r.status_code not in (401, 403) and r.status_code < 500
        assert client.get("/v1/fine_tuning/jobs", headers=bearer("admin")).json()["data"] == []


def test_promotion_needs_the_promote_scope_on_that_adapter(settings: SharedSettings) -> None:
    keys = [
        *KEYS,
        {
            "name": "ci-bots",
            "key": "sk-cibots-012345678",
            "scopes": ["evaluate"],
            "adapters": ["bot"],
        },
    ]
    app = evaluator_app(EvaluatorSettings(data_dir=settings.data_dir, keys=keys))
    ci = {"authorization": "Bearer sk-cibots-012345678"}
    body = {"candidate": "bot@v3", "baseline": "none", "limit": 1, "promote": "prod"}
    with TestClient(app) as client:
        # The finding: an evaluation asking to promote, from a key that may only evaluate.
        r = client.post("/v1/evaluations", headers=ci, json=body)
        assert r.status_code == 403 and "'promote'" in r.json()["error"]["message"]
        r = client.post("/v1/evaluations", headers=ci, json={**body, "candidate": "support-bot@v3"})
        assert r.status_code == 403 and "support-bot" in r.json()["error"]["message"]
        # Nothing was queued.
        assert client.get("/v1/evaluations", headers=bearer("admin")).json()["data"] == []
