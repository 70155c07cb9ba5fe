"""Alert rules, the Grafana dashboard and the autoscaling queries: well formed, in sync with each
other, and naming only metrics the services define."""

from __future__ import annotations

import os
import re
import shutil
from itertools import combinations
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy import crd_schemas
from tests.deploy.manifests import by_kind, rendered
from tests.deploy.monitoring import (
    ADAPTER_RULES,
    PROMETHEUS_RULE,
    alert_groups,
    base_name,
    dashboard,
    dashboard_exprs,
    defined_metrics,
    metrics_in,
    prometheus_rule_text,
    service_packages,
)

# What the dashboard must show: per-adapter traffic, latency, tokens, adapter loading and
# residency, engine health, reconcile lag (series names as the server exports them).
DASHBOARD_SERIES = {
    "loraplex_requests_total",
    "loraplex_request_duration_seconds",
    "loraplex_time_to_first_token_seconds",
    "loraplex_prompt_tokens_total",
    "loraplex_completion_tokens_total",
    "loraplex_adapter_load_duration_seconds",
    "loraplex_adapters_loaded",
    "loraplex_engine_up",
    "loraplex_engine_restarts_total",
    "loraplex_reconcile_lag_seconds",
}
# vLLM's own series that the server re-exports with an engine label (vLLM metrics docs).
VLLM_SERIES = {"vllm:num_requests_waiting", "vllm:num_requests_running"}
SEVERITIES = {"critical", "warning", "info"}
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl missing")


def balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    in_string = False
    for ch in expr:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack and not in_string


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in alert_groups() for rule in group["rules"]]


def test_alert_rules_are_well_formed() -> None:
    jsonschema.validate(alert_groups(), crd_schemas.RULE_GROUPS)
    names = [r["alert"] for r in all_rules()]
    assert len(names) == len(set(names)), names
    for rule in all_rules():
        assert balanced(rule["expr"]), f"{rule['alert']}: unbalanced expression"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_required_alerts_exist() -> None:
    exprs = {r["alert"]: " ".join(r["expr"].split()) for r in all_rules()}
    assert any("loraplex_engine_up" in e and "== 0" in e for e in exprs.values()), "engine down"
    # A starting engine (a full version's during a hot swap) is not down; one stuck starting is.
    down = exprs["LoraplexEngineDown"]
    assert "unless on (namespace, pod, engine)" in down and "loraplex_engine_starting" in down
    assert any(
        k != "LoraplexEngineDown" and "loraplex_engine_starting" in e for k, e in exprs.items()
    ), "engine stuck starting"
    assert any("loraplex_reconcile_lag_seconds" in e for e in exprs.values()), "reconcile lag"
    per_adapter_errors = [
        e
        for e in exprs.values()
        if 'loraplex_requests_total{status=~"5.."}' in e and re.search(r"by \([^)]*adapter", e)
    ]
    assert per_adapter_errors, "error rate per adapter"


def test_prometheus_rule_matches_alerts_file() -> None:
    assert PROMETHEUS_RULE.read_text() == prometheus_rule_text(), (
        "deploy/k8s/components/monitoring/prometheusrule.yaml is stale: "
        "run `python -m tests.deploy.monitoring`"
    )
    doc = yaml.safe_load(PROMETHEUS_RULE.read_text())
    jsonschema.validate(doc, crd_schemas.PROMETHEUS_RULE)


def test_dashboard_is_well_formed() -> None:
    data = dashboard()
    assert data["uid"] and data["title"]
    variables = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", "namespace", "adapter"} <= variables
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    boxes = []
    for panel in data["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        boxes.append((panel["title"], pos))
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert balanced(expr), f"{panel['title']}: unbalanced {expr}"
            used = set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']}: unknown variables {used - variables}"
            assert 'namespace="$namespace"' in expr, f"{panel['title']}: no namespace filter"
    for (a, pa), (b, pb) in combinations(boxes, 2):
        overlap_x = pa["x"] < pb["x"] + pb["w"] and pb["x"] < pa["x"] + pa["w"]
        overlap_y = pa["y"] < pb["y"] + pb["h"] and pb["y"] < pa["y"] + pa["h"]
        assert not (overlap_x and overlap_y), f"panels {a!r} and {b!r} overlap"


def test_dashboard_shows_every_adapter_and_engine_series() -> None:
    shown = {base_name(m) for m in metrics_in(dashboard_exprs(dashboard()))}
    assert shown >= DASHBOARD_SERIES, DASHBOARD_SERIES - shown


def _used_metrics() -> dict[str, set[str]]:
    """Metric name -> where deploy/ uses it (alerts, dashboard, autoscaler queries)."""
    used: dict[str, set[str]] = {}

    def add(exprs: list[str], where: str) -> None:
        for metric in metrics_in(exprs):
            used.setdefault(metric, set()).add(where)

    add([r["expr"] for r in all_rules()], "alerts.yaml")
    add(dashboard_exprs(dashboard()), "loraplex.json")
    adapter_rules = yaml.safe_load(ADAPTER_RULES.read_text())["externalRules"]
    add([r["seriesQuery"] for r in adapter_rules], "adapter-rules.yaml")
    if shutil.which("kubectl"):
        for doc in by_kind(rendered("gpu"), "ScaledObject"):
            add([t["metadata"]["query"] for t in doc["spec"]["triggers"]], "ScaledObject")
    return used


@pytest.mark.parametrize("service", ["server", "trainer"])
def test_metrics_used_are_exported_by_the_services(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names in the alerts, dashboard and autoscalers are names the services define (in code, or
    on the trainer's live /metrics). Skipped for a service that defines no metrics yet."""
    package = service_packages()[service]
    defined = defined_metrics(package) | scraped_metrics(service, tmp_path, monkeypatch)
    prefix = "loraplex_trainer_" if service == "trainer" else "loraplex_"
    wanted = {
        base_name(m): where
        for m, where in _used_metrics().items()
        if m.startswith(prefix) and (service == "trainer" or not m.startswith("loraplex_trainer_"))
    }
    missing = {m: sorted(w) for m, w in wanted.items() if m not in defined}
    if missing and not defined:
        pytest.skip(f"services/{service} exports no metrics yet; deploy/ expects {missing}")
    assert not missing, f"used in deploy/ but not defined in services/{service}: {missing}"


def scraped_metrics(service: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Series names on the live /metrics of the trainer's app (its gauges are built at scrape
    time from the registry, so they have no literal name in services/trainer)."""
    if service != "trainer":
        return set()
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from services.trainer.api.app import create_app
    from services.trainer.config import TrainerSettings

    for key in [k for k in os.environ if k.startswith("LORAPLEX_")]:
        monkeypatch.delenv(key)
    with TestClient(create_app(TrainerSettings(data_dir=data_dir))) as client:
        text = client.get("/metrics").text
    return {family.name for family in text_string_to_metric_families(text)}


def test_vllm_metrics_used_exist() -> None:
    used = {m for m in _used_metrics() if m.startswith("vllm:")}
    assert used <= VLLM_SERIES, used - VLLM_SERIES


@needs_kubectl
def test_hpa_external_metrics_have_adapter_rules() -> None:
    served = {r["name"]["as"] for r in yaml.safe_load(ADAPTER_RULES.read_text())["externalRules"]}
    hpas = by_kind(rendered("cpu-dev"), "HorizontalPodAutoscaler")
    wanted = {m["external"]["metric"]["name"] for h in hpas for m in h["spec"]["metrics"]}
    assert wanted and wanted <= served, wanted - served
