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

from tests.deploy import crd_schemas
from tests.deploy.manifests import (
    DEPLOY,
    EXTERNAL_SECRETS,
    K8S,
    K8S_VERSIONS,
    OVERLAY_EXTERNAL_SECRETS,
    OVERLAYS,
    by_kind,
    check_autoscalers,
    check_env_settings,
    check_images,
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
    invariant_problems,
    is_loraplex,
    named,
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


@pytest.mark.parametrize(
    ("manifest", "edit", "where", "what"),
    [
        (
            "server.yaml",
            _drop_readiness,
            "Deployment/loraplex-server container server",
            "no readinessProbe",
        ),
        (
            "trainer.yaml",
            _drop_cpu_request,
            "Deployment/loraplex-trainer-api container api",
            "no cpu request",
        ),
    ],
    ids=["readiness-probe-removed", "cpu-request-removed"],
)
@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_checks_fail_on_a_mutated_copy(
    tmp_path: Path,
    overlay: str,
    manifest: str,
    edit: Callable[[list[dict[str, Any]]], None],
    where: str,
    what: str,
) -> None:
    """Copy deploy/k8s, break one base manifest, render the overlay again: the invariant checks
    must report exactly that breakage (and the unbroken copy must pass)."""
    copy_root = tmp_path / "k8s"
    shutil.copytree(K8S, copy_root)
    external = OVERLAY_EXTERNAL_SECRETS[overlay]
    assert invariant_problems(render(copy_root / "overlays" / overlay), external) == []
    _edit_yaml(copy_root / "base" / manifest, edit)
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

    return [
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
    assert {"loraplex-database", "loraplex-server-keys"} <= set(named(docs, "Secret"))
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
    assert [p["port"] for rule in server["ingress"] for p in rule["ports"]] == [8000]
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
            checked += 1
    assert checked, "no settings class could be imported"


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_trainer_and_server_agree_on_the_lora_rank(overlay: str) -> None:
    """The trainer refuses ranks above its max_lora_rank so that the server can load every
    adapter it trains: the two settings must be equal."""
    config_maps = named(rendered(overlay), "ConfigMap")
    server = config_maps["loraplex-server"]["data"]["LORAPLEX_MAX_LORA_RANK"]
    assert config_maps["loraplex-trainer"]["data"]["LORAPLEX_MAX_LORA_RANK"] == server
