"""shared.logs: one line per event in text or JSON, secrets never written."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.logs import (
    JsonFormatter,
    Redactor,
    TextFormatter,
    configure,
    event,
    log_format,
    mask_url,
    secret_values,
)


def _capture(fmt: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> io.StringIO:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure("trainer-worker", "INFO", fmt=fmt)
    return stream


@pytest.fixture(autouse=True)
def _restore_root() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_lines_carry_service_event_and_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _capture("text", monkeypatch, {})
    event(logging.getLogger("x"), "job.claimed", job="ftjob-1", attempt=2, note="two words")
    line = out.getvalue().strip()
    assert line.endswith('INFO trainer-worker job.claimed job=ftjob-1 attempt=2 note="two words"')
    assert line[:4].isdigit() and "T" in line.split()[0]  # an ISO timestamp leads


def test_json_lines_are_one_object_each(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _capture("json", monkeypatch, {})
    log = logging.getLogger("loraplex.x")
    event(log, "gate.decision", run="eval-1", decision="pass", reasons=["a", "b"])
    log.warning("plain %s", "line")
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert docs[0]["event"] == "gate.decision" and docs[0]["reasons"] == ["a", "b"]
    assert docs[0]["service"] == "trainer-worker" and docs[0]["level"] == "INFO"
    assert docs[0]["ts"].endswith("Z") and docs[0]["logger"] == "loraplex.x"
    assert docs[1]["event"] == "log" and docs[1]["message"] == "plain line"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_and_url_passwords_never_reach_the_log(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "LORAPLEX_ADMIN_KEY": "adm-s3cret-value",
        "LORAPLEX_API_KEYS": '{"sk-tenant-one": ["*"]}',
        "LORAPLEX_JUDGE_API_KEY": "judge-s3cret",
    }
    out = _capture(fmt, monkeypatch, env)
    log = logging.getLogger("x")
    event(
        log,
        "worker.started",
        registry="postgresql+psycopg://loraplex:hunter22@db:5432/reg",
        header="Bearer adm-s3cret-value",
        nested={"key": ["judge-s3cret"]},
    )
    log.info("admin key is %s and tenant sk-tenant-one", "adm-s3cret-value")
    try:
        raise RuntimeError("failed with adm-s3cret-value")
    except RuntimeError:
        log.exception("boom")
    text = out.getvalue()
    for secret in ("adm-s3cret-value", "sk-tenant-one", "judge-s3cret", "hunter22"):
        assert secret not in text, secret
    assert "loraplex:***@db" in text and text.count("***") >= 5


def test_redactor_control_case_without_secrets_keeps_text() -> None:
    # The control for the test above: with no secret configured nothing is masked.
    assert Redactor([]).clean("token adm-s3cret-value") == "token adm-s3cret-value"
    assert secret_values({"LORAPLEX_DATA_DIR": "/tmp/x", "LORAPLEX_API_KEY": "abc"}) == []


def test_mask_url() -> None:
    assert mask_url("postgresql://u:p%40ss@h/db") == "postgresql://u:***@h/db"
    assert mask_url("sqlite:////tmp/r.db") == "sqlite:////tmp/r.db"
    assert mask_url("http://h:8000/v1") == "http://h:8000/v1"


def test_unknown_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLEX_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="LORAPLEX_LOG_FORMAT"):
        log_format()


def test_formatters_render_the_same_record() -> None:
    record = logging.LogRecord("n", logging.INFO, __file__, 1, "m", None, None)
    record.event, record.fields = "alias.moved", {"alias": "a:prod", "to_version": "a@v2"}
    assert "alias.moved alias=a:prod to_version=a@v2" in TextFormatter("s").format(record)
    assert json.loads(JsonFormatter("s").format(record))["to_version"] == "a@v2"


def test_keys_of_the_key_configuration_are_masked(tmp_path: Path) -> None:
    listed = '[{"name": "ci", "key": "sk-ci-listed-0123456789", "scopes": ["evaluate"]}]'
    mounted = tmp_path / "keys.json"
    mounted.write_text('[{"name": "op", "key": "sk-op-mounted-012345678", "scopes": ["admin"]}]')
    found = secret_values({"LORAPLEX_KEYS": listed, "LORAPLEX_KEYS_FILE": str(mounted)})
    assert "sk-ci-listed-0123456789" in found and "sk-op-mounted-012345678" in found
    text = Redactor(found).clean("Bearer sk-ci-listed-0123456789 / sk-op-mounted-012345678")
    assert "sk-" not in text
