"""`services.evaluator.cli`: the ``loraplex eval`` and ``loraplex gate`` commands."""

from __future__ import annotations

from pathlib import Path

from services.evaluator.config import EvaluatorSettings
from services.evaluator.policy import parse_policy
from shared.registry.db import Registry


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
