"""The kustomize overlays render, validate against the Kubernetes schemas, pass yamllint, and keep
the invariants schemas cannot see; each invariant check is shown to fail on a broken copy."""

from __future__ import annotations

import base64
import copy
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from shared.env_names import KNOWN_VARIABLES
from tests.deploy import crd_schemas
from tests.deploy.manifests import (
    DEPLOY,
    EXTERNAL_SECRETS,
    K8S,
    K8S_VERSIONS,
    KEYS_FILE_ENV,
    KEYS_SECRET,
    MONITORING_NAMESPACE,
    OVERLAY_EXTERNAL_SECRETS,
    OVERLAYS,
    by_kind,
    check_autoscalers,
    check_env_settings,
    check_images,
    check_keys,
    check_known_env,
    check_monitoring_network,
    check_ports,
    check_probes,
    check_rbac,
    check_references,
    check_resources,
    check_selectors,
    check_server,
    check_service_monitors,
    containers,
    env_sources,
    ingress_ports,
    invariant_problems,
    is_loraplex,
    named,
    pod_labels,
    pod_spec,
    render,
    rendered,
    service_of,
)

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed"
)

# Ids that never equal "gpu": tests/conftest.py skips items carrying a "gpu" keyword.
OVERLAY_PARAMS = [pytest.param(o, id=f"overlays/{o}") for o in OVERLAYS]

SETTINGS_CLASSES = {
    "shared": [("shared.settings", "SharedSettings")],
    "server": [("services.server.config", "ServerSettings")],
    "trainer": [
        ("services.trainer.config", "TrainerSettings"),
        ("services.trainer.k8s_jobs", "KubernetesJobSettings"),
    ],
    "evaluator": [("services.evaluator.config", "EvaluatorSettings")],
}


def settings_env_names(service: str) -> frozenset[str]:
    """LORAPLEX_* names a service reads; skips the test if its settings class does not exist."""
    names: set[str] = set()
    for module_name, class_name in SETTINGS_CLASSES[service]:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            pytest.skip(f"{module_name}.{class_name} does not exist yet ({exc})")
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        for field, info in cls.model_fields.items():
            alias = info.validation_alias if isinstance(info.validation_alias, str) else None
            names.add((alias or prefix + field).upper())
    return frozenset(names)


@pytest.mark.parametrize("target", [pytest.param("base", id="base"), *OVERLAY_PARAMS])
def test_renders(target: str) -> None:
    directory = K8S / "base" if target == "base" else K8S / "overlays" / target
    docs = render(directory)
    assert by_kind(docs, "Deployment"), f"{target} renders no Deployment"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_validates_against_kubernetes_schema(overlay: str, version: str) -> None:
    unknown = set()
    for doc in rendered(overlay):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except SchemaNotFoundError:
            unknown.add(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}"
            )
    # Custom kinds have no bundled schema; each one must be covered by test_custom_resources.
    assert unknown <= set(crd_schemas.BY_KIND), unknown


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_custom_resources_match_their_crd_schema(overlay: str) -> None:
    for doc in rendered(overlay):
        schema = crd_schemas.BY_KIND.get(doc["kind"])
        if schema is None:
            continue
        jsonschema.validate(doc, schema)
        for trigger in doc["spec"].get("triggers", []) if doc["kind"] == "ScaledObject" else []:
            if trigger["type"] == "prometheus":
                missing = crd_schemas.PROMETHEUS_TRIGGER_KEYS - set(trigger["metadata"])
                assert not missing, f"{doc['metadata']['name']}: trigger lacks {missing}"


def test_crd_schema_rejects_a_typo() -> None:
    docs = rendered("gpu")
    scaled = copy.deepcopy(by_kind(docs, "ScaledObject")[0])
    scaled["spec"]["minReplicas"] = scaled["spec"].pop("minReplicaCount")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, crd_schemas.SCALED_OBJECT)


def test_yamllint() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "-c",
            str(DEPLOY / ".yamllint"),
            "-f",
            "parsable",
            str(DEPLOY),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_invariants(overlay: str) -> None:
    assert invariant_problems(rendered(overlay), OVERLAY_EXTERNAL_SECRETS[overlay]) == []


@pytest.mark.parametrize("service", ["shared", "server", "trainer", "evaluator"])
@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_env_vars_are_real_settings(overlay: str, service: str) -> None:
    docs = rendered(overlay)
    assert any(is_loraplex(c) and service_of(c) == service for _, c, _ in containers(docs))
    allowed = {service: settings_env_names(service)}
    assert check_env_settings(docs, allowed) == []


def test_env_check_catches_a_typo() -> None:
    docs = rendered("cpu-dev")
    named(docs, "ConfigMap")["loraplex-server"]["data"]["LORAPLEX_MAX_LORA"] = "8"
    allowed = {"server": frozenset({"LORAPLEX_MAX_LORAS"})}
    problems = check_env_settings(docs, allowed)
    assert any("LORAPLEX_MAX_LORA " in p for p in problems), problems


# -- the invariant checks fail on broken manifests -------------------------------------------


def _edit_yaml(path: Path, edit: Callable[[list[dict[str, Any]]], None]) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    edit(docs)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _server_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    server = named(docs, "Deployment")["loraplex-server"]
    spec = pod_spec(server)
    assert spec is not None
    container: dict[str, Any] = spec["containers"][0]
    return container


def _drop_readiness(docs: list[dict[str, Any]]) -> None:
    del _server_container(docs)["readinessProbe"]


def _drop_cpu_request(docs: list[dict[str, Any]]) -> None:
    # The trainer API: no overlay patches its resources, so the base edit reaches the output.
    spec = pod_spec(named(docs, "Deployment")["loraplex-trainer-api"])
    assert spec is not None
    del spec["containers"][0]["resources"]["requests"]["cpu"]


def _drop_key_mount(docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(named(docs, "Deployment")["loraplex-trainer-api"])
    assert spec is not None
    mounts = spec["containers"][0]["volumeMounts"]
    mounts[:] = [m for m in mounts if m["name"] != "keys"]


def _monitoring_any_port(docs: list[dict[str, Any]]) -> None:
    rules = named(docs, "NetworkPolicy")["loraplex-server"]["spec"]["ingress"]
    monitoring = next(r for r in rules if "namespaceSelector" in r["from"][0])
    del monitoring["ports"]


def _unknown_variable(docs: list[dict[str, Any]]) -> None:
    named(docs, "ConfigMap")["loraplex-config"]["data"]["LORAPLEX_KEY_FILE"] = "/etc/keys.json"


def _no_bearer(docs: list[dict[str, Any]]) -> None:
    del by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["authorization"]


_FILE_MUTATIONS = [
    (
        "readiness-probe-removed",
        OVERLAYS,
        "base/server.yaml",
        _drop_readiness,
        "Deployment/loraplex-server container server",
        "no readinessProbe",
    ),
    (
        "cpu-request-removed",
        OVERLAYS,
        "base/trainer.yaml",
        _drop_cpu_request,
        "Deployment/loraplex-trainer-api container api",
        "no cpu request",
    ),
    (
        "key-file-mount-removed",
        OVERLAYS,
        "base/trainer.yaml",
        _drop_key_mount,
        "Deployment/loraplex-trainer-api container api",
        f"{KEYS_FILE_ENV} /etc/loraplex/keys/keys.json is not a file of a mounted Secret",
    ),
    (
        "monitoring-reaches-every-port",
        OVERLAYS,
        "base/networkpolicy.yaml",
        _monitoring_any_port,
        "Deployment/loraplex-server",
        "the monitoring namespace reaches every port;",
    ),
    (
        "unknown-variable",
        OVERLAYS,
        "base/config.yaml",
        _unknown_variable,
        "ConfigMap/loraplex-config",
        "LORAPLEX_KEY_FILE is not a variable loraplex knows",
    ),
    (
        "service-monitor-without-bearer",
        ("gpu",),
        "components/monitoring/servicemonitor.yaml",
        _no_bearer,
        "ServiceMonitor/loraplex",
        "has no bearer credentials",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "edit", "where", "what", "overlay"),
    [
        pytest.param(m, e, w, t, o, id=f"{name}-overlays/{o}")
        for name, overlays, m, e, w, t in _FILE_MUTATIONS
        for o in overlays
    ],
)
def test_checks_fail_on_a_mutated_copy(
    tmp_path: Path,
    overlay: str,
    manifest: str,
    edit: Callable[[list[dict[str, Any]]], None],
    where: str,
    what: str,
) -> None:
    """Copy deploy/k8s, break one manifest, render the overlay again: the invariant checks must
    report exactly that breakage (and the unbroken copy must pass)."""
    copy_root = tmp_path / "k8s"
    shutil.copytree(K8S, copy_root)
    external = OVERLAY_EXTERNAL_SECRETS[overlay]
    assert invariant_problems(render(copy_root / "overlays" / overlay), external) == []
    _edit_yaml(copy_root / manifest, edit)
    problems = invariant_problems(render(copy_root / "overlays" / overlay), external)
    assert problems and all(p.startswith(where) for p in problems), problems
    assert any(p.endswith(what) or f"{what} " in p for p in problems), problems


def _mutations() -> list[
    tuple[str, Callable[[list[dict[str, Any]]], None], Callable[..., list[str]]]
]:
    def latest(docs: list[dict[str, Any]]) -> None:
        _server_container(docs)["image"] = "ghcr.io/loraplex/loraplex:latest"

    def init_memory(docs: list[dict[str, Any]]) -> None:
        spec = pod_spec(named(docs, "Deployment")["loraplex-trainer-worker"])
        assert spec is not None
        del spec["initContainers"][0]["resources"]["requests"]["memory"]

    def gpu_mismatch(docs: list[dict[str, Any]]) -> None:
        _server_container(docs)["resources"]["limits"]["nvidia.com/gpu"] = "2"

    def short_startup(docs: list[dict[str, Any]]) -> None:
        _server_container(docs)["startupProbe"]["failureThreshold"] = 3

    def selector(docs: list[dict[str, Any]]) -> None:
        named(docs, "Service")["loraplex-server"]["spec"]["selector"][
            "app.kubernetes.io/component"
        ] = "srv"

    def target_port(docs: list[dict[str, Any]]) -> None:
        named(docs, "Service")["loraplex-trainer-api"]["spec"]["ports"][0]["targetPort"] = "web"

    def scaled_target(docs: list[dict[str, Any]]) -> None:
        by_kind(docs, "ScaledObject")[0]["spec"]["scaleTargetRef"]["name"] = "loraplex-gone"

    def scaled_namespace(docs: list[dict[str, Any]]) -> None:
        trigger = by_kind(docs, "ScaledObject")[0]["spec"]["triggers"][0]
        trigger["metadata"]["query"] = trigger["metadata"]["query"].replace('"loraplex"', '"other"')

    def monitor_port(docs: list[dict[str, Any]]) -> None:
        by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] = "metrics"

    def rbac(docs: list[dict[str, Any]]) -> None:
        by_kind(docs, "Role")[0]["rules"][0]["verbs"].append("patch")

    def secret(docs: list[dict[str, Any]]) -> None:
        _server_container(docs)["envFrom"].append({"secretRef": {"name": "loraplex-missing"}})

    def port(docs: list[dict[str, Any]]) -> None:
        named(docs, "ConfigMap")["loraplex-server"]["data"]["LORAPLEX_PORT"] = "9000"

    def ingress_admin(docs: list[dict[str, Any]]) -> None:
        path = by_kind(docs, "Ingress")[0]["spec"]["rules"][0]["http"]["paths"][0]
        path["path"] = "/admin"

    def replicas(docs: list[dict[str, Any]]) -> None:
        named(docs, "Deployment")["loraplex-server"]["spec"]["replicas"] = 3

    def no_pdb(docs: list[dict[str, Any]]) -> None:
        pdb = named(docs, "PodDisruptionBudget")["loraplex-trainer-api"]
        docs[:] = [d for d in docs if d is not pdb]

    def _container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
        spec = pod_spec(named(docs, "Deployment")[deployment])
        assert spec is not None
        container: dict[str, Any] = spec["containers"][0]
        return container

    def no_key_env(docs: list[dict[str, Any]]) -> None:
        env = _server_container(docs)["env"]
        env[:] = [v for v in env if v["name"] != KEYS_FILE_ENV]

    def no_key_mount(docs: list[dict[str, Any]]) -> None:
        _drop_key_mount(docs)

    def key_mount_writable(docs: list[dict[str, Any]]) -> None:
        mount = next(m for m in _server_container(docs)["volumeMounts"] if m["name"] == "keys")
        del mount["readOnly"]

    def key_file_elsewhere(docs: list[dict[str, Any]]) -> None:
        env = _container(docs, "loraplex-evaluator-api")["env"]
        next(v for v in env if v["name"] == KEYS_FILE_ENV)["value"] = "/etc/loraplex/keys.json"

    def keys_in_worker(docs: list[dict[str, Any]]) -> None:
        spec = pod_spec(named(docs, "Deployment")["loraplex-trainer-worker"])
        assert spec is not None
        spec["volumes"].append({"name": "keys", "secret": {"secretName": KEYS_SECRET}})
        spec["containers"][0]["volumeMounts"].append(
            {"name": "keys", "mountPath": "/etc/loraplex/keys", "readOnly": True}
        )

    def keys_as_env(docs: list[dict[str, Any]]) -> None:
        _server_container(docs)["envFrom"].append({"secretRef": {"name": KEYS_SECRET}})

    def key_in_config_map(docs: list[dict[str, Any]]) -> None:
        named(docs, "ConfigMap")["loraplex-server"]["data"]["LORAPLEX_ADMIN_KEY"] = "x" * 32

    def no_server_key(docs: list[dict[str, Any]]) -> None:
        env = _container(docs, "loraplex-evaluator-worker")["env"]
        env[:] = [v for v in env if v["name"] != "LORAPLEX_SERVER_API_KEY"]

    def server_key_optional(docs: list[dict[str, Any]]) -> None:
        env = _container(docs, "loraplex-evaluator-api")["env"]
        var = next(v for v in env if v["name"] == "LORAPLEX_SERVER_API_KEY")
        var["valueFrom"]["secretKeyRef"]["optional"] = True

    def monitoring_any_port(docs: list[dict[str, Any]]) -> None:
        _monitoring_any_port(docs)

    def monitoring_other_port(docs: list[dict[str, Any]]) -> None:
        rules = named(docs, "NetworkPolicy")["loraplex-trainer-api"]["spec"]["ingress"]
        next(r for r in rules if "namespaceSelector" in r["from"][0])["ports"][0]["port"] = 8002

    def monitoring_in_shared_rule(docs: list[dict[str, Any]]) -> None:
        # Prometheus added to the rule of loraplex's own pods, as the policy once had it.
        rules = named(docs, "NetworkPolicy")["loraplex-evaluator-api"]["spec"]["ingress"]
        rules[0]["from"].append({"namespaceSelector": {"matchLabels": dict(MONITORING_NAMESPACE)}})
        rules[0]["ports"].append({"port": 8001, "protocol": "TCP"})

    def monitoring_workers(docs: list[dict[str, Any]]) -> None:
        docs.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "loraplex-node-metrics", "namespace": "loraplex"},
                "spec": {
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "loraplex"}},
                    "ingress": [
                        {
                            "from": [{"namespaceSelector": {}}],
                            "ports": [{"port": 9100, "protocol": "TCP"}],
                        }
                    ],
                },
            }
        )

    def no_default_deny(docs: list[dict[str, Any]]) -> None:
        deny = named(docs, "NetworkPolicy")["loraplex-default-deny-ingress"]
        docs[:] = [d for d in docs if d is not deny]

    def unknown_env(docs: list[dict[str, Any]]) -> None:
        _server_container(docs)["env"].append({"name": "LORAPLEX_KEYSFILE", "value": "/k"})

    def unknown_config(docs: list[dict[str, Any]]) -> None:
        _unknown_variable(docs)

    def no_bearer(docs: list[dict[str, Any]]) -> None:
        _no_bearer(docs)

    def bearer_without_key(docs: list[dict[str, Any]]) -> None:
        endpoint = by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]
        del endpoint["authorization"]["credentials"]["key"]

    def token_secret_missing(docs: list[dict[str, Any]]) -> None:
        endpoint = by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]
        endpoint["authorization"]["credentials"]["name"] = "loraplex-gone"

    def key_secret_missing(docs: list[dict[str, Any]]) -> None:
        spec = pod_spec(named(docs, "Deployment")["loraplex-server"])
        assert spec is not None
        next(v for v in spec["volumes"] if v["name"] == "keys")["secret"]["secretName"] = "gone"

    def external(docs: list[dict[str, Any]]) -> list[str]:
        return check_references(docs, EXTERNAL_SECRETS)

    return [
        ("no_key_env", no_key_env, check_keys),
        ("no_key_mount", no_key_mount, check_keys),
        ("key_mount_writable", key_mount_writable, check_keys),
        ("key_file_elsewhere", key_file_elsewhere, check_keys),
        ("keys_in_worker", keys_in_worker, check_keys),
        ("keys_as_env", keys_as_env, check_keys),
        ("key_in_config_map", key_in_config_map, check_keys),
        ("no_server_key", no_server_key, check_keys),
        ("server_key_optional", server_key_optional, check_keys),
        ("monitoring_any_port", monitoring_any_port, check_monitoring_network),
        ("monitoring_other_port", monitoring_other_port, check_monitoring_network),
        ("monitoring_in_shared_rule", monitoring_in_shared_rule, check_monitoring_network),
        ("monitoring_workers", monitoring_workers, check_monitoring_network),
        ("no_default_deny", no_default_deny, check_monitoring_network),
        ("unknown_env", unknown_env, lambda d: check_known_env(d, KNOWN_VARIABLES)),
        ("unknown_config", unknown_config, lambda d: check_known_env(d, KNOWN_VARIABLES)),
        ("no_bearer", no_bearer, check_service_monitors),
        ("bearer_without_key", bearer_without_key, check_service_monitors),
        ("token_secret_missing", token_secret_missing, external),
        ("key_secret_missing", key_secret_missing, external),
        ("latest", latest, check_images),
        ("init_memory", init_memory, check_resources),
        ("gpu_mismatch", gpu_mismatch, check_resources),
        ("short_startup", short_startup, check_server),
        ("selector", selector, check_selectors),
        ("target_port", target_port, check_selectors),
        ("no_pdb", no_pdb, check_selectors),
        ("scaled_target", scaled_target, check_autoscalers),
        ("scaled_namespace", scaled_namespace, check_autoscalers),
        ("replicas", replicas, check_autoscalers),
        ("monitor_port", monitor_port, check_service_monitors),
        ("rbac", rbac, check_rbac),
        ("secret", secret, lambda d: check_references(d, EXTERNAL_SECRETS)),
        ("port", port, check_ports),
        ("ingress_admin", ingress_admin, lambda d: check_references(d, EXTERNAL_SECRETS)),
        ("probe", _drop_readiness, check_probes),
    ]


@pytest.mark.parametrize(
    ("name", "mutate", "check"), _mutations(), ids=[m[0] for m in _mutations()]
)
def test_each_check_catches_its_breakage(
    name: str, mutate: Callable[[list[dict[str, Any]]], None], check: Callable[..., list[str]]
) -> None:
    docs = rendered("gpu")
    assert check(docs) == [], f"{name}: the shipped overlay already fails"
    mutate(docs)
    assert check(docs), f"{name}: the check did not notice"


# -- what each overlay must contain -------------------------------------------------------------


def test_cpu_dev_is_self_contained() -> None:
    docs = rendered("cpu-dev")
    assert "loraplex-postgres" in named(docs, "StatefulSet")
    # Every Secret the gpu overlay leaves to the operator but S3 (dev keeps artifacts on a volume).
    assert EXTERNAL_SECRETS - {"loraplex-s3"} <= set(named(docs, "Secret"))
    # No custom resources: the dev overlay applies to a bare cluster.
    assert not [d for d in docs if d["kind"] in crd_schemas.BY_KIND]
    assert by_kind(docs, "HorizontalPodAutoscaler"), "the HPA alternative is rendered here"


def test_gpu_overlay_uses_external_services_and_gpus() -> None:
    docs = rendered("gpu")
    assert not by_kind(docs, "StatefulSet"), "production uses an external PostgreSQL"
    assert not set(named(docs, "Secret")) & EXTERNAL_SECRETS, "no secret values in git"
    assert by_kind(docs, "ScaledObject") and by_kind(docs, "ServiceMonitor")
    assert by_kind(docs, "PrometheusRule")
    server = _server_container(docs)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["image"] == "ghcr.io/loraplex/loraplex:0.1.0-gpu"
    trainer_config = named(docs, "ConfigMap")["loraplex-trainer"]["data"]
    worker = named(docs, "Deployment")["loraplex-trainer-worker"]
    worker_spec = pod_spec(worker)
    assert worker_spec is not None
    assert trainer_config["LORAPLEX_K8S_IMAGE"] == worker_spec["containers"][0]["image"]
    assert trainer_config["LORAPLEX_K8S_ENABLED"] == "true"


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_artifacts_are_shared(overlay: str) -> None:
    """LORAPLEX_ARTIFACT_URL is S3, or a path every pod mounts from the same claim."""
    docs = rendered(overlay)
    for doc, c, init in containers(docs):
        if init or not is_loraplex(c):
            continue
        url = env_sources(docs, c)["LORAPLEX_ARTIFACT_URL"][1]
        if url.startswith("s3://"):
            assert "loraplex-s3" in {s.get("secretRef", {}).get("name") for s in c["envFrom"]}
            continue
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        spec = pod_spec(doc)
        assert spec is not None
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert url in mounts, f"{doc['metadata']['name']}: {url} is not mounted"
        assert volumes[mounts[url]]["persistentVolumeClaim"]["claimName"] == "loraplex-artifacts"


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_trainer_and_evaluator_pods_share_their_data_dir(overlay: str) -> None:
    """Uploads, checkpoints and reports live under LORAPLEX_DATA_DIR, written by a worker and
    read by the API or another worker: one claim for all of those pods."""
    docs = rendered(overlay)
    for doc, c, _init in containers(docs):
        if not is_loraplex(c) or service_of(c) not in {"trainer", "evaluator"}:
            continue
        data_dir = env_sources(docs, c)["LORAPLEX_DATA_DIR"][1]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == data_dir)
        spec = pod_spec(doc)
        assert spec is not None
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["persistentVolumeClaim"]["claimName"] == "loraplex-data"


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_network_policies(overlay: str) -> None:
    policies = named(rendered(overlay), "NetworkPolicy")
    deny = policies["loraplex-default-deny-ingress"]["spec"]
    assert (
        deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    )
    server = policies["loraplex-server"]["spec"]
    assert {p["port"] for rule in server["ingress"] for p in rule["ports"]} == {8000}
    engines = policies["loraplex-engines"]["spec"]["ingress"]
    assert engines == [
        {
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "loraplex",
                            "app.kubernetes.io/component": "server",
                        }
                    }
                }
            ]
        }
    ]


def _reach(docs: list[dict[str, Any]], **source: Any) -> dict[str, set[int] | None]:
    """Workload name -> the ports a source may open on it (None: every port)."""
    out: dict[str, set[int] | None] = {}
    for doc in docs:
        if pod_spec(doc) is None:
            continue
        ports = ingress_ports(docs, doc, **source)
        out[doc["metadata"]["name"]] = None if ports is None else {p for _, p in ports}
    return out


# The API workloads and the port each serves (its API and /metrics) on.
API_PORTS = {"loraplex-server": 8000, "loraplex-trainer-api": 8001, "loraplex-evaluator-api": 8002}


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_monitoring_reaches_only_the_metrics_ports(overlay: str) -> None:
    """Prometheus's namespace opens each service's metrics port and nothing else; the flows that
    were allowed before stay allowed (the ingress controller to the server, loraplex's pods to
    each API), and no other namespace gets anything."""
    docs = rendered(overlay)
    assert check_monitoring_network(docs) == []
    monitoring = _reach(docs, source_namespace=MONITORING_NAMESPACE)
    assert monitoring == {
        name: {API_PORTS[name]} if name in API_PORTS else set() for name in monitoring
    }
    ingress = _reach(docs, source_namespace={"kubernetes.io/metadata.name": "ingress-nginx"})
    assert {n: p for n, p in ingress.items() if p} == {"loraplex-server": {8000}}
    other = _reach(docs, source_namespace={"kubernetes.io/metadata.name": "default"})
    assert not any(other.values()) and None not in other.values()
    # The evaluator worker (generation through the server) and the other loraplex pods.
    evaluator = pod_labels(named(docs, "Deployment")["loraplex-evaluator-worker"])
    own = _reach(docs, source_pod=evaluator)
    expected = {n: {p} for n, p in API_PORTS.items()}
    if overlay == "cpu-dev":
        expected["loraplex-postgres"] = {5432}
    assert {n: p for n, p in own.items() if p} == expected
    stranger = _reach(docs, source_pod={"app.kubernetes.io/name": "debug"})
    assert not any(stranger.values())


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_api_keys_reach_every_service_from_secrets(overlay: str) -> None:
    """The server and both APIs read LORAPLEX_KEYS_FILE from the read-only loraplex-keys mount;
    the evaluator calls the server with a key from a Secret; workers and init containers hold no
    key file."""
    docs = rendered(overlay)
    assert check_keys(docs) == []
    with_keys = {
        doc["metadata"]["name"]
        for doc, c, _init in containers(docs)
        if KEYS_FILE_ENV in env_sources(docs, c)
    }
    assert with_keys == set(API_PORTS)
    for _doc, c, init in containers(docs):
        if service_of(c) == "evaluator" and not init:
            ref = next(v for v in c["env"] if v["name"] == "LORAPLEX_SERVER_API_KEY")
            assert ref["valueFrom"]["secretKeyRef"] == {
                "name": "loraplex-evaluator-keys",
                "key": "LORAPLEX_SERVER_API_KEY",
            }
    assert "loraplex-server-keys" not in str(docs), "the old server key Secret is gone"


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_manifests_set_only_known_variables(overlay: str) -> None:
    """Start-up stops on a LORAPLEX_ name that shared/env_names.py does not list."""
    assert check_known_env(rendered(overlay), KNOWN_VARIABLES) == []


def test_service_monitor_sends_a_metrics_token() -> None:
    docs = rendered("gpu")
    assert check_service_monitors(docs) == []
    for endpoint in by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"]:
        assert endpoint["authorization"] == {
            "type": "Bearer",
            "credentials": {"name": "loraplex-metrics-token", "key": "token"},
        }


def _secret_values(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    data = named(docs, "Secret")[name].get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


# The roles of base/config.yaml and docs/deploy.md, with their scopes.
ROLE_SCOPES = {
    "operator": {"admin"},
    "ci": {"evaluate", "promote", "read"},
    "trainer-client": {"train", "read"},
    "evaluator-to-server": {"infer", "read"},
    "prometheus": {"metrics"},
}


def test_dev_keys_are_marked_and_consistent(tmp_path: Path) -> None:
    """cpu-dev's generated keys load as the services load them, are all marked dev-only, give
    each role its scopes, and the evaluator's server key and Prometheus's token are entries of
    keys.json with the right scopes."""
    auth = pytest.importorskip("shared.auth")
    docs = rendered("cpu-dev")
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(_secret_values(docs, KEYS_SECRET)["keys.json"])
    specs = auth.load_key_file(keys_file)
    auth.KeyRing.from_specs(specs)  # unique names
    by_name = {s.name: s for s in specs}
    for spec in specs:
        assert spec.key.get_secret_value().startswith("dev-only-"), spec.name
    for role, scopes in ROLE_SCOPES.items():
        assert set(by_name[role].scopes) == scopes, role
    apps = [s for s in specs if s.name not in ROLE_SCOPES]
    assert apps and all(set(s.scopes) == {"infer"} and "*" not in s.adapters for s in apps)
    server_key = _secret_values(docs, "loraplex-evaluator-keys")["LORAPLEX_SERVER_API_KEY"]
    assert server_key == by_name["evaluator-to-server"].key.get_secret_value()
    token = _secret_values(docs, "loraplex-metrics-token")["token"]
    assert token == by_name["prometheus"].key.get_secret_value()


def test_dev_keys_never_reach_production() -> None:
    docs = rendered("gpu")
    assert "dev-only-" not in yaml.safe_dump_all(docs)
    assert not set(named(docs, "Secret")) & EXTERNAL_SECRETS


def test_training_job_gets_no_key_and_known_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Job the trainer worker creates (gpu overlay) serves nothing: it gets no key file and
    no key Secret as environment, and sets only variables start-up accepts."""
    k8s_jobs = pytest.importorskip("services.trainer.k8s_jobs")
    docs = rendered("gpu")
    config_maps = named(docs, "ConfigMap")
    for key in [k for k in os.environ if k.startswith("LORAPLEX_")]:
        monkeypatch.delenv(key)
    for key, value in config_maps["loraplex-trainer"]["data"].items():
        monkeypatch.setenv(key, value)
    settings = k8s_jobs.KubernetesJobSettings()
    assert KEYS_SECRET not in settings.secrets
    job = k8s_jobs.job_manifest("ftjob-1", settings, namespace="loraplex", worker_id="worker-1")
    with_job = [*docs, job]
    assert check_keys(with_job) == []
    assert check_known_env(with_job, KNOWN_VARIABLES) == []
    assert check_monitoring_network(with_job) == []
    assert ingress_ports(with_job, job, MONITORING_NAMESPACE) == set()


def test_trainer_worker_rbac_is_namespaced_and_minimal() -> None:
    docs = rendered("gpu")
    assert check_rbac(docs) == []
    role = named(docs, "Role")["loraplex-trainer-jobs"]
    jobs = next(r for r in role["rules"] if r["resources"] == ["jobs"])
    assert set(jobs["verbs"]) == {"create", "get", "list", "watch", "delete"}
    binding = named(docs, "RoleBinding")["loraplex-trainer-jobs"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "loraplex-trainer-worker", "namespace": "loraplex"}
    ]
    accounts = named(docs, "ServiceAccount")
    assert accounts["loraplex"]["automountServiceAccountToken"] is False
    for doc in by_kind(docs, "Deployment"):
        spec = pod_spec(doc)
        assert spec is not None
        token = doc["metadata"]["name"] == "loraplex-trainer-worker"
        assert spec["serviceAccountName"] == ("loraplex-trainer-worker" if token else "loraplex")


def test_external_secrets_are_documented() -> None:
    text = (DEPLOY.parent / "docs" / "deploy.md").read_text()
    for name in sorted(EXTERNAL_SECRETS):
        assert name in text, f"docs/deploy.md does not say how to create Secret {name}"


def _container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """Variables with their values, Secrets decoded; Secrets not rendered here are left out."""
    config_maps, secrets = named(docs, "ConfigMap"), named(docs, "Secret")
    env: dict[str, str] = {}
    for var in container.get("env", []):
        key_ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        secret = secrets.get((key_ref or {}).get("name", ""))
        if key_ref and secret and key_ref["key"] in (secret.get("data") or {}):
            env[var["name"]] = base64.b64decode(secret["data"][key_ref["key"]]).decode()
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]].get("data") or {})
        secret = secrets.get(source.get("secretRef", {}).get("name", ""))
        if secret:
            data = secret.get("data") or {}
            env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
            env.update(secret.get("stringData") or {})
    env.update({v["name"]: v["value"] for v in container.get("env", []) if "value" in v})
    return env


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_settings_accept_the_configured_values(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each container's environment loads into its settings classes without an error (ranks
    vLLM accepts, max_cpu_loras >= max_loras, JSON lists, URLs ...)."""
    docs = rendered(overlay)
    settings_module = importlib.import_module("shared.settings")
    checked = 0
    for doc, c, _init in containers(docs):
        if not is_loraplex(c):
            continue
        service = service_of(c)
        assert service is not None
        env = _container_env(docs, c)
        env["LORAPLEX_DATA_DIR"] = str(tmp_path / "data")
        for module_name, class_name in SETTINGS_CLASSES[service]:
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError):
                continue
            for key in [k for k in os.environ if k.startswith("LORAPLEX_")]:
                monkeypatch.delenv(key)
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            try:
                cls()
            except pydantic.ValidationError as exc:
                pytest.fail(f"{overlay} {doc['metadata']['name']}/{c['name']}: {class_name}: {exc}")
            check_environment = getattr(settings_module, "check_environment", None)
            if check_environment is not None:  # what start-up runs before the class
                check_environment(os.environ, cls)
            if (
                KEYS_FILE_ENV in env
                and KEYS_SECRET in named(docs, "Secret")
                and hasattr(cls, "keyring")
            ):
                # The mounted Secret's file, where the container reads it.
                keys_file = tmp_path / "keys.json"
                keys_file.write_text(_secret_values(docs, KEYS_SECRET)["keys.json"])
                monkeypatch.setenv(KEYS_FILE_ENV, str(keys_file))
                assert cls().keyring().enabled
            checked += 1
    assert checked, "no settings class could be imported"


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_trainer_and_server_agree_on_the_lora_rank(overlay: str) -> None:
    """The trainer refuses ranks above its max_lora_rank so that the server can load every
    adapter it trains: the two settings must be equal."""
    config_maps = named(rendered(overlay), "ConfigMap")
    server = config_maps["loraplex-server"]["data"]["LORAPLEX_MAX_LORA_RANK"]
    assert config_maps["loraplex-trainer"]["data"]["LORAPLEX_MAX_LORA_RANK"] == server
