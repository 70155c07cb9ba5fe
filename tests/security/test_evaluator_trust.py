"""The evaluator's part of the trust model: each test performs the attack and asserts it fails
with a 4xx (or is refused by the queue's fencing) and that nothing stored changed.

- credentials never go to a URL a request or a suite chooses (a recording stub server proves no
  request reached it);
- evaluation data (and suite/policy files) only from the registry or under LORAPLEX_DATA_DIRS;
- the zombie worker: a worker taken over while alive writes nothing, promotes nothing and cannot
  delete the new owner's results;
- a crash between storing a pass and moving the alias is finished by the next claimant;
- the gate fails closed: all-optional policies that compute nothing, floors on too few items;
- a caller-written policy on a protected alias is refused at submission (403).

No model runs here: ``Runner.run`` is replaced by a synthetic result where a run is needed.
"""

# The evaluator's fixtures are imported from tests/evaluator/conftest.py and used as parameters.
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.evaluator import gate, service
from services.evaluator.api.app import create_app
from services.evaluator.config import Endpoint, EvaluatorSettings
from services.evaluator.policy import parse_policy
from services.evaluator.results import RunResult
from services.evaluator.runner import Runner
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.worker import Worker
from shared.artifacts import open_store
from shared.registry import adapters, policies
from shared.registry.db import Registry
from shared.registry.evaluation_runs import promotion_record
from shared.registry.models import (
    AliasEventRow,
    DatasetRow,
    EvaluationRunRow,
    ItemRecordRow,
    MetricResultRow,
    utcnow,
)
from shared.registry.queue import Claim
from tests.evaluator.conftest import (  # noqa: F401 - fixtures
    EXAMPLES,
    adapter_v1,
    ev_registry,
    ev_settings,
    validation_file,
)
from tests.evaluator.helpers import run as synthetic_run

SECRET = "sk-server-key-must-not-leak"
PASSING_POLICY = {"min_items": 2, "metrics": {"exact_match": {"min": 0.5}}}


def _count(registry: Registry, model: Any) -> int:
    with registry.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _nothing_stored(registry: Registry) -> None:
    for model in (EvaluationRunRow, MetricResultRow, ItemRecordRow, AliasEventRow):
        assert _count(registry, model) == 0, model.__tablename__


@contextmanager
def recording_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server that answers like an OpenAI endpoint and records every request it gets."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                }
            )
            data = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

        do_GET = _answer  # noqa: N815 - the stdlib's handler names
        do_POST = _answer  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def client(ev_settings: EvaluatorSettings) -> Iterator[TestClient]:
    settings = ev_settings.model_copy(update={"server_api_key": SECRET})
    with TestClient(create_app(settings)) as c:
        yield c


# -- no credentials to request-chosen places ------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("server_url", lambda url: {"server_url": url}),
        ("server", lambda url: {"server": url}),
        ("suite", lambda url: {"suite": _judge_suite(url)}),
    ],
)
def test_a_url_in_a_request_is_refused_and_never_called(
    client: TestClient,
    ev_registry: Registry,
    adapter_v1: str,
    field: str,
    make: Callable[[str], dict[str, Any]],
) -> None:
    with recording_server() as (url, seen):
        reply = client.post("/v1/evaluations", json={"candidate": adapter_v1, **make(url)})
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert "name an endpoint" in error["message"] or any(
        "name an endpoint" in d for d in error.get("details", [])
    ), error
    assert seen == []  # not even a GET /v1/models with the key
    _nothing_stored(ev_registry)


def _judge_suite(endpoint: str, **judge: Any) -> dict[str, Any]:
    return {
        "generation": {"enabled": True},
        "judge": {"enabled": True, "endpoint": endpoint, "model": "j", **judge},
    }


def test_a_key_in_a_suite_and_unknown_endpoint_names_are_refused(
    client: TestClient, ev_registry: Registry, adapter_v1: str
) -> None:
    keyed = client.post(
        "/v1/evaluations",
        json={"candidate": adapter_v1, "suite": _judge_suite("judge", api_key="sk-x")},
    )
    assert keyed.status_code == 422 and "keys come only from" in keyed.text
    for body, param in (
        ({"server": "elsewhere"}, "server"),
        ({"suite": _judge_suite("elsewhere")}, "suite.judge.endpoint"),
    ):
        reply = client.post("/v1/evaluations", json={"candidate": adapter_v1, **body})
        assert reply.status_code == 422, reply.text
        assert reply.json()["error"]["param"] == param
        assert "unknown endpoint 'elsewhere'" in reply.json()["error"]["message"]
    _nothing_stored(ev_registry)


def test_each_key_goes_only_to_its_own_named_endpoint(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    with recording_server() as (judge_url, judge_seen), recording_server() as (srv, srv_seen):
        settings = ev_settings.model_copy(
            update={
                "server_url": srv,
                "server_api_key": SECRET,
                "endpoints": {"grader": Endpoint(url=judge_url, api_key="sk-grader")},
            }
        )
        req = EvaluationCreate(candidate=adapter_v1, suite=_judge_suite("grader"))
        service.submit(settings, ev_registry, req)
    assert {r["authorization"] for r in judge_seen} == {"Bearer sk-grader"}
    assert {r["authorization"] for r in srv_seen} == {f"Bearer {SECRET}"}  # the server check


def test_legacy_server_variables_are_the_endpoint_named_server(
    monkeypatch: pytest.MonkeyPatch, ev_settings: EvaluatorSettings
) -> None:
    monkeypatch.setenv("LORAPLEX_SERVER_URL", "http://srv:8000/")
    monkeypatch.setenv("LORAPLEX_SERVER_API_KEY", "sk-1")
    monkeypatch.setenv("LORAPLEX_JUDGE_URL", "http://judge:9000")
    monkeypatch.setenv("LORAPLEX_ENDPOINTS", '{"big": {"url": "http://big:8000", "api_key": "k"}}')
    named = EvaluatorSettings().named_endpoints()
    assert named["server"] == Endpoint(url="http://srv:8000", api_key="sk-1")
    assert named["judge"].url == "http://judge:9000" and named["judge"].api_key == ""
    assert named["big"].api_key == "k"
    assert "sk-1" not in repr(named)  # keys stay out of reprs (and so out of logs)


# -- data only from the registry or allowed directories --------------------------------------------


@pytest.fixture
def outside(tmp_path: Path, ev_settings: EvaluatorSettings) -> Path:
    """Valid evaluation data outside every allowed directory (so only the path check refuses it)."""
    path = tmp_path / "outside" / "secret.jsonl"
    path.parent.mkdir()
    path.write_text((EXAMPLES / "test.jsonl").read_text())
    assert not path.is_relative_to(ev_settings.data_dir)
    return path


def test_data_outside_the_allowed_directories_is_refused(
    client: TestClient,
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    adapter_v1: str,
    outside: Path,
) -> None:
    link = ev_settings.data_dir / "innocent.jsonl"
    link.symlink_to(outside)  # a link inside that leads out
    climb = ev_settings.data_dir / ".." / "outside" / "secret.jsonl"
    relative = os.path.relpath(outside, Path.cwd())
    for data in (
        str(outside),
        str(link),
        str(climb),
        relative,
        "../../../../../../etc/passwd",
        "/etc/passwd",
    ):
        reply = client.post(
            "/v1/evaluations", json={"candidate": adapter_v1, "data": data, "limit": 2}
        )
        assert reply.status_code == 422, (data, reply.text)
        assert reply.json()["error"]["param"] == "data"
        assert "outside the directories" in reply.json()["error"]["message"], data
    for field in ("policy", "suite"):
        reply = client.post("/v1/evaluations", json={"candidate": adapter_v1, field: "/etc/x.yaml"})
        assert reply.status_code == 422 and "outside the directories" in reply.text, field
    traversal = client.post("/v1/evaluations", json={"candidate": adapter_v1, "suite": "../../x"})
    assert traversal.status_code == 404 and "unknown suite" in traversal.text
    _nothing_stored(ev_registry)


def test_registered_files_and_allowed_paths_are_accepted(
    client: TestClient, ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    sha = open_store(ev_settings).put_file(EXAMPLES / "test.jsonl")
    with ev_registry.session() as session:
        session.add(
            DatasetRow(
                id="file-eval",
                filename="test.jsonl",
                purpose="fine-tune",
                format="chat",
                sha256=sha,
                row_count=60,
                bytes=1,
            )
        )
    inside = ev_settings.data_dir / "held-out.jsonl"
    inside.write_text((EXAMPLES / "test.jsonl").read_text())
    for data in ("file-eval", str(inside), str(EXAMPLES / "test.jsonl")):
        reply = client.post("/v1/evaluations", json={"candidate": adapter_v1, "data": data})
        assert reply.status_code == 201, (data, reply.text)


def test_data_dirs_setting_replaces_the_defaults(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str, outside: Path
) -> None:
    settings = ev_settings.model_copy(update={"data_dirs": [outside.parent]})
    req = EvaluationCreate(candidate=adapter_v1, data=str(outside))
    assert service.submit(settings, ev_registry, req)
    with pytest.raises(Exception, match="outside the directories"):
        service.submit(
            settings, ev_registry, EvaluationCreate(candidate=adapter_v1, data=str(EXAMPLES))
        )


# -- one fenced queue ------------------------------------------------------------------------------


def _passing_result(plan: Any) -> RunResult:
    result = synthetic_run({"exact_match": [1, 1, 1, 1]}, {"exact_match": [0, 1, 0, 1]})
    result.run_id = plan.run_id
    return result


def _worker_settings(ev_settings: EvaluatorSettings) -> EvaluatorSettings:
    # Heartbeats never come within a test: "silent" is set by hand (the worker may be paused).
    return ev_settings.model_copy(update={"worker_heartbeat_s": 3600.0})


def _age(registry: Registry, run_id: str, settings: EvaluatorSettings) -> None:
    with registry.session() as session:
        row = session.get(EvaluationRunRow, run_id)
        assert row is not None
        row.heartbeat_at = utcnow() - timedelta(seconds=settings.worker_stale_s + 5)


def _submit_promotion(settings: EvaluatorSettings, registry: Registry, candidate: str) -> str:
    req = EvaluationCreate(candidate=candidate, policy=PASSING_POLICY, promote="prod", limit=4)
    return service.submit(settings, registry, req, requested_by="ci-key")


@pytest.mark.parametrize(
    ("zombie_wakes", "zombie_ends"),
    [
        ("after the successor finished", "with a pass"),
        ("after the successor finished", "with an error"),
        ("while the successor runs", "with a pass"),
        ("while the successor runs", "with an error"),
    ],
)
def test_zombie_worker_taken_over_while_alive_writes_nothing(
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    adapter_v1: str,
    monkeypatch: pytest.MonkeyPatch,
    zombie_wakes: str,
    zombie_ends: str,
) -> None:
    settings = _worker_settings(ev_settings)
    run_id = _submit_promotion(settings, ev_registry, adapter_v1)
    zombie, successor = (
        Worker(settings, ev_registry, worker_id="zombie"),
        Worker(settings, ev_registry, worker_id="successor"),
    )
    wake_zombie, zombie_done = threading.Event(), threading.Event()
    early = zombie_wakes == "while the successor runs"

    def fake_run(self: Runner) -> RunResult:
        if threading.current_thread().name == "zombie":
            assert wake_zombie.wait(60)  # paused past worker_stale_s, then wakes up
            if zombie_ends == "with an error":
                raise RuntimeError("the zombie's engine died")
        elif early:  # the successor is mid-run while the zombie tries to finish
            wake_zombie.set()
            assert zombie_done.wait(60)
        return _passing_result(self.plan)

    def run_zombie() -> None:
        try:
            assert first is not None
            zombie.process(first)
        finally:
            zombie_done.set()

    monkeypatch.setattr(Runner, "run", fake_run)
    first = zombie.claim()
    assert first is not None and first.attempt == 1
    thread = threading.Thread(target=run_zombie, name="zombie")
    thread.start()
    try:
        _age(ev_registry, run_id, settings)
        second = successor.claim()
        assert second is not None and second.attempt == 2 and second.took_over_from == "zombie"
        successor.process(second)
        won = service.get_run(ev_registry, run_id)
        metrics, items = _count(ev_registry, MetricResultRow), _count(ev_registry, ItemRecordRow)
        assert won.status == "succeeded" and won.decision == "pass" and metrics > 0
    finally:
        wake_zombie.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    row = service.get_run(ev_registry, run_id)
    # The successor's result and promotion stand; the zombie stored, failed and moved nothing.
    assert row.status == "succeeded" and row.error is None and row.attempts == 2
    assert row.promotion_state == "moved"
    assert row.report_path is not None and "attempt-2" in row.report_path
    assert Path(row.report_path).is_file()
    assert not (settings.evaluations_dir / run_id / "attempt-1").exists()
    assert _count(ev_registry, MetricResultRow) == metrics
    assert _count(ev_registry, ItemRecordRow) == items
    with ev_registry.session() as session:
        history = adapters.alias_history(session, "shop", "prod")
    assert [(e.to_version, e.evaluation_run_id) for e in history] == [(adapter_v1, run_id)]


def test_crash_between_pass_and_promote_is_finished_by_the_next_claimant(
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    adapter_v1: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _worker_settings(ev_settings)
    run_id = _submit_promotion(settings, ev_registry, adapter_v1)
    monkeypatch.setattr(Runner, "run", lambda self: _passing_result(self.plan))
    real_finish = service.finish_promotion

    def crash(*args: Any) -> Any:
        raise SystemExit("killed between storing the pass and moving the alias")

    monkeypatch.setattr(service, "finish_promotion", crash)
    crashed = Worker(settings, ev_registry, worker_id="crashed")
    claim = crashed.claim()
    assert claim is not None
    with pytest.raises(SystemExit):
        crashed.process(claim)
    row = service.get_run(ev_registry, run_id)
    assert row.status == "succeeded" and row.decision == "pass"
    assert row.promotion_state == "pending"
    pub = service.public(row)
    assert pub.status == "running" and pub.stage == "promotion"  # callers keep waiting
    with ev_registry.session() as session:
        assert adapters.get_alias(session, "shop", "prod") is None
    monkeypatch.setattr(service, "finish_promotion", real_finish)
    # Not claimable while its owner may still be alive ...
    assert Worker(settings, ev_registry, worker_id="next").claim() is None
    # ... and finished by whoever picks it up once the owner went silent.
    _age(ev_registry, run_id, settings)
    nxt = Worker(settings, ev_registry, worker_id="next")
    resumed = nxt.claim()
    assert resumed is not None and resumed.row_id == run_id and resumed.attempt == 2
    nxt.process(resumed)
    row = service.get_run(ev_registry, run_id)
    assert row.promotion_state == "moved"
    assert row.worker_id is None and service.public(row).status == "succeeded"
    with ev_registry.session() as session:
        assert adapters.resolve(session, "shop:prod").id == adapter_v1
        history = adapters.alias_history(session, "shop", "prod")
    assert [e.evaluation_run_id for e in history] == [run_id]
    # The resuming worker names the key that queued the run, as the original owner would have.
    assert row.requested_by == "ci-key" and history[0].actor == "loraplex-gate for ci-key"
    # The crashed owner, back, can neither move it again nor rewrite the run.
    assert service.finish_promotion(ev_registry, claim) == promotion_record(row)
    assert not service.fail_run(ev_registry, claim, RuntimeError("late"))
    assert service.get_run(ev_registry, run_id).status == "succeeded"


def test_sigterm_gives_the_run_back_and_the_worker_exits(
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    adapter_v1: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _worker_settings(ev_settings)
    run_id = service.submit(settings, ev_registry, EvaluationCreate(candidate=adapter_v1, limit=4))
    worker = Worker(settings, ev_registry, worker_id="w")

    seen: list[object] = []

    def slow_run(self: Runner) -> RunResult:
        with self.tracker.stage("generate (candidate)", 4) as advance:
            advance(1)
            try:  # what the heartbeat thread does: the stage reached is stored, the API shows it
                claim = Claim(run_id, "w", service.get_run(ev_registry, run_id).attempts)
                with ev_registry.session() as session:
                    seen.append(worker._beat(session, claim))
                running = service.get_run(ev_registry, run_id)
                seen.extend([running.stage, service.public(running).stage])
            finally:
                worker.stopping.set()  # what the SIGTERM handler does, mid-run
            advance(1)
        raise AssertionError("the worker should have stopped at the progress step")

    monkeypatch.setattr(Runner, "run", slow_run)
    assert worker.serve() == 1  # returns (exit 0) instead of looping on
    assert seen == [True, "generate (candidate)", "generate (candidate)"]
    row = service.get_run(ev_registry, run_id)
    assert row.status == "queued" and row.worker_id is None and row.error is None
    assert row.config["released"] == 1 and _count(ev_registry, MetricResultRow) == 0
    assert row.stage is None  # given back: no stage until the next claimant reaches one
    assert not (settings.evaluations_dir / run_id).exists()


def test_the_worker_process_exits_0_on_sigterm(ev_settings: EvaluatorSettings) -> None:
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "LORAPLEX_DATA_DIR": str(ev_settings.data_dir), "PYTHONUNBUFFERED": "1"}
    log = ev_settings.data_dir / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.evaluator", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "worker.started" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "worker.stopped" in log.read_text()


# -- the gate fails closed -------------------------------------------------------------------------


def test_an_all_optional_policy_that_computes_nothing_fails() -> None:
    policy = parse_policy(
        "min_items: 1\nmetrics:\n"
        "  exact_match: {min: 0.5, required: false}\n"
        "  rougeL: {min: 0.1, required: false}\n"
    )
    result = synthetic_run({"token_f1": [1.0, 1.0, 1.0]})  # neither line's metric
    decision = gate.decide(policy, result)
    assert decision.decision == "fail", decision.reasons
    assert any("checks nothing" in r for r in decision.reasons)


def test_floors_on_too_few_items_do_not_pass() -> None:
    policy = parse_policy("min_items: 20\nmetrics:\n  exact_match: {min: 0.5}\n")
    one = gate.decide(policy, synthetic_run({"exact_match": [1]}))  # what `limit: 1` gives
    assert one.decision == "inconclusive", one.reasons
    assert any("computed on 1 items" in r for r in one.reasons)
    enough = gate.decide(policy, synthetic_run({"exact_match": [1] * 20}))
    assert enough.decision == "pass"
    below = gate.decide(policy, synthetic_run({"exact_match": [0]}))
    assert below.decision == "fail"  # a floor missed stays a failure, however few the items


# -- protected aliases: registered policies, not caller-written ones --------------------------------


@pytest.fixture
def protected(client: TestClient, ev_registry: Registry) -> dict[str, Any]:
    reply = client.post("/v1/policies", json={"name": "shop-release", "policy": PASSING_POLICY})
    assert reply.status_code == 201, reply.text
    registered = reply.json()
    assert registered["sha256"] == parse_policy(json.dumps(PASSING_POLICY)).sha256()
    with ev_registry.session() as session:
        policies.protect_alias(session, "shop", "prod", "shop-release", actor="admin")
    return dict(registered)


def test_a_caller_written_policy_on_a_protected_alias_is_refused(
    client: TestClient, ev_registry: Registry, adapter_v1: str, protected: dict[str, Any]
) -> None:
    lax = {"min_items": 1, "metrics": {"json_valid": {"min": 0}}}
    for body in (
        {"policy": lax},
        {"policy": json.dumps(lax)},
        {"baseline": "none"},  # the registered policy, but compared with nothing
    ):
        reply = client.post(
            "/v1/evaluations",
            json={"candidate": adapter_v1, "promote": "prod", "limit": 1, **body},
        )
        assert reply.status_code == 403, (body, reply.text)
        assert "protected" in reply.json()["error"]["message"]
    assert _count(ev_registry, EvaluationRunRow) == 0
    with ev_registry.session() as session:
        assert adapters.get_alias(session, "shop", "prod") is None


def test_a_protected_alias_is_gated_and_moved_under_its_registered_policy(
    client: TestClient,
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    adapter_v1: str,
    protected: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert client.get("/v1/policies/shop-release").json()["version"] == 1
    assert client.get("/v1/policies/nope").status_code == 404
    made = client.post(
        "/v1/evaluations", json={"candidate": adapter_v1, "promote": "prod", "limit": 4}
    )
    assert made.status_code == 201, made.text
    run_id = made.json()["id"]
    row = service.get_run(ev_registry, run_id)
    assert row.policy_sha256 == protected["sha256"] and row.candidate_version == adapter_v1
    monkeypatch.setattr(Runner, "run", lambda self: _passing_result(self.plan))
    worker = Worker(_worker_settings(ev_settings), ev_registry)
    claim = worker.claim()
    assert claim is not None
    worker.process(claim)
    row = service.get_run(ev_registry, run_id)
    assert row.promotion_state == "moved", promotion_record(row)
    assert row.baseline_version == "smollm2-135m-instruct"  # the bare base, a first release
    with ev_registry.session() as session:
        assert adapters.resolve(session, "shop:prod").id == adapter_v1
