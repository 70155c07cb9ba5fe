"""The alert rules and the dashboard, and the metric names the services define.

``python -m tests.deploy.monitoring`` rewrites the PrometheusRule from deploy/prometheus/alerts.yaml.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.manifests import DEPLOY, K8S, REPO

ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = K8S / "components" / "monitoring" / "prometheusrule.yaml"
ADAPTER_RULES = DEPLOY / "prometheus" / "adapter-rules.yaml"
DASHBOARD = DEPLOY / "grafana" / "loraplex.json"
# Metric names in PromQL: loraplex_* and vLLM's vllm:* (re-exported by the server).
METRIC = re.compile(r"\b(loraplex_[a-z0-9_]+|vllm:[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def alert_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text())["groups"]
    return groups


def prometheus_rule_text() -> str:
    """The PrometheusRule that carries exactly the groups of alerts.yaml."""

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, text)
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "loraplex",
            "labels": {"app.kubernetes.io/name": "loraplex", "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": alert_groups()},
    }
    header = (
        "# Generated from deploy/prometheus/alerts.yaml by `python -m tests.deploy.monitoring`;\n"
        "# tests/deploy checks that the two match.\n"
    )
    return header + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100, indent=2)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs(data: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    for var in data["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query.get("query", ""))
    return exprs


def metrics_in(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC.findall(e)}


def base_name(metric: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def defined_metrics(package: Path) -> set[str]:
    """Series names the prometheus_client calls under ``package`` export: Counter("x") gives
    x_total, Histogram("x") gives x (and x_bucket/_sum/_count), Gauge and Metric give x."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            name = first.value
            if kind == "Counter":
                names.add(name.removesuffix("_total") + "_total")
            elif kind in {"Gauge", "Histogram", "Summary", "Metric", "GaugeMetricFamily"}:
                names.add(name)
    return names


def service_packages() -> dict[str, Path]:
    return {s: REPO / "services" / s for s in ("server", "trainer", "evaluator")}


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(prometheus_rule_text())
    print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}")
