"""`services.evaluator.cli`: the ``loraplex eval`` and ``loraplex gate`` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.evaluator import runs
from services.evaluator.cli import _actor, _inline_suite, eval_app
from services.evaluator.config import EvaluatorSettings
from services.evaluator.policy import parse_policy
from services.evaluator.schemas import EvaluationCreate
from shared.errors import LoraplexError
from shared.registry.db import Registry
from tests.evaluator.helpers import run as synthetic_run


def test_policy_register_cli_stores_the_parsed_body_and_its_hash(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from services.evaluator.cli import eval_app

    policy = tmp_path / "gate.yaml"
    policy.write_text("min_items: 5\nmetrics:\n  exact_match: {min: 0.5}\n")
    cli = CliRunner()
    out = cli.invoke(eval_app, ["policy", "register", str(policy), "--name", "shop-gate"])
    assert out.exit_code == 0, out.output
    sha = parse_policy(policy.read_text()).sha256()
    assert json.loads(out.output) == {"name": "shop-gate", "version": 1, "sha256": sha}
    again = cli.invoke(eval_app, ["policy", "register", str(policy), "--name", "shop-gate"])
    assert json.loads(again.output)["version"] == 1  # the same content is one version
    policy.write_text("metrics:\n  bleurt: {min: 0.1}\n")
    bad = cli.invoke(eval_app, ["policy", "register", str(policy), "--name", "shop-gate"])
    assert bad.exit_code == 3 and "unknown metric 'bleurt'" in bad.output
    shown = cli.invoke(eval_app, ["policy", "show", "shop-gate"])
    body = json.loads(shown.output)
    assert body["sha256"] == sha and body["body"]["min_items"] == 5
    # What is stored parses back to the same hash: the registry never hashes policies itself.
    assert parse_policy(json.dumps(body["body"])).sha256() == sha


# -- without the model: runs made from a request alone --------------------------------------------


def test_status_report_and_errors_exit_with_the_runs_code(
    bare_settings: EvaluatorSettings, bare_registry: Registry, tmp_path: Path
) -> None:
    request = EvaluationCreate(candidate="shop@v1")
    claim = runs.create_run(bare_registry, request, None, "eval-cli", "running", owner="w1")
    assert claim is not None
    runs.fail_run(bare_registry, claim, RuntimeError("engine crashed"))
    cli = CliRunner()
    status = cli.invoke(eval_app, ["status", "eval-cli", "--wait"])
    assert status.exit_code == 3 and '"status": "failed"' in status.output
    no_report = cli.invoke(eval_app, ["report", "eval-cli"])
    assert no_report.exit_code == 3
    assert "error: evaluation eval-cli has no report (status failed)" in no_report.output
    assert cli.invoke(eval_app, ["report", "eval-cli", "--format", "pdf"]).exit_code == 3
    unknown = cli.invoke(eval_app, ["status", "eval-none"])
    assert unknown.exit_code == 3 and "does not exist" in unknown.output
    done = runs.create_run(bare_registry, request, None, "eval-done", "running", owner="w1")
    assert done is not None
    (tmp_path / "report.html").write_text("<p>html</p>")
    (tmp_path / "junit.xml").write_text("<testsuite/>")
    result = synthetic_run({"exact_match": [1, 1]})
    runs.store_result(bare_registry, done, result, None, tmp_path / "report.html", {})
    path = cli.invoke(eval_app, ["report", "eval-done", "--format", "junit", "--path"])
    assert path.exit_code == 0 and path.output.strip() == str(tmp_path / "junit.xml")
    assert cli.invoke(eval_app, ["report", "eval-done"]).output.strip() == "<p>html</p>"
    finished = cli.invoke(eval_app, ["status", "eval-done", "--wait"])
    assert finished.exit_code == 0 and '"exit_code": 0' in finished.output
    missing = cli.invoke(
        eval_app, ["policy", "register", str(tmp_path / "nope.yaml"), "--name", "x"]
    )
    assert missing.exit_code == 3 and "does not exist" in missing.output


def test_submit_sends_a_suite_file_inline_and_a_name_as_it_is(tmp_path: Path) -> None:
    assert _inline_suite(None) is None
    assert _inline_suite("quick") == "quick"
    suite = tmp_path / "mine.yaml"
    suite.write_text("judge: {enabled: false}\n")
    assert _inline_suite(str(suite)) == {"judge": {"enabled": False}, "name": "mine"}
    named = tmp_path / "other.yaml"
    named.write_text("name: kept\n")
    assert _inline_suite(str(named)) == {"name": "kept"}
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(LoraplexError, match="is not a YAML mapping"):
        _inline_suite(str(listed))
    with pytest.raises(LoraplexError, match="does not exist"):
        _inline_suite(str(tmp_path / "gone.yaml"))
    assert _actor().startswith("cli:") and "@" in _actor()
