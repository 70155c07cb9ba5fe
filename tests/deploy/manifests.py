"""Render the kustomize overlays and check what schemas cannot see.

Every ``check_*`` function takes rendered documents and returns a list of problems (empty: fine),
so the same checks run on the shipped overlays, on mutated copies (to prove they fail), and on
the training Job that ``services/trainer/k8s_jobs.py`` generates.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from shared.env_names import KNOWN_VARIABLES

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu-dev", "gpu")
# Oldest Kubernetes the manifests target (podFailurePolicy, HPA v2 behavior) and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS = ("1.29", "1.37")

# Secrets the gpu overlay expects the operator to create (docs/deploy.md lists each one).
EXTERNAL_SECRETS = frozenset(
    {
        "loraplex-database",
        "loraplex-keys",
        "loraplex-evaluator-keys",
        "loraplex-metrics-token",
        "loraplex-s3",
    }
)

# The key configuration (shared/auth.py): one Secret, mounted as a file by every container that
# checks API keys (the ones that listen), named by LORAPLEX_KEYS_FILE.
KEYS_SECRET = "loraplex-keys"
KEYS_SECRET_KEY = "keys.json"
KEYS_FILE_ENV = "LORAPLEX_KEYS_FILE"
# The evaluator calls the server with this key (scopes infer, read), from a Secret.
EVALUATOR_SERVER_KEY_ENV = "LORAPLEX_SERVER_API_KEY"
# Variables that carry keys: never a literal value or a ConfigMap entry.
KEY_ENV = frozenset(
    {
        "LORAPLEX_KEYS",
        "LORAPLEX_ADMIN_KEY",
        "LORAPLEX_API_KEYS",
        "LORAPLEX_SERVER_API_KEY",
        "LORAPLEX_JUDGE_API_KEY",
        "LORAPLEX_CLIENT_KEY",
    }
)
# Where Prometheus runs (the namespace's automatic label): base/networkpolicy.yaml.
MONITORING_NAMESPACE = {"kubernetes.io/metadata.name": "monitoring"}

# The service each image command runs, by its first words; "shared" is SharedSettings only.
SERVICE_OF_COMMAND = {
    ("serve",): "server",
    ("train",): "trainer",
    ("eval",): "evaluator",
    ("model",): "shared",
    ("adapters",): "server",
}
# A full fine-tune's engine (services/server/full_manifests.py): vLLM's OpenAI server run from the
# loraplex image under tini, which stays PID 1. Its pods carry the engine component label, which
# the base NetworkPolicy loraplex-engines opens to the server pods only.
INIT_PREFIX = ["/usr/bin/tini", "--"]
ENGINE_COMMAND = [*INIT_PREFIX, "python", "-m", "vllm.entrypoints.openai.api_server"]
ENGINE = "engine"
ENGINE_LABEL = {"app.kubernetes.io/component": "engine"}
SERVER_POD = {"app.kubernetes.io/name": "loraplex", "app.kubernetes.io/component": "server"}
SERVICE_PORTS = {"server": 8000, "trainer": 8001, "evaluator": 8002}
# Every service serves /metrics on its API port (shared/service_app.py, the server's app).
METRICS_PORTS = SERVICE_PORTS
# The settings that set each service's bind address and port.
SERVICE_BIND_ENV = {
    "server": ("LORAPLEX_HOST", "LORAPLEX_PORT"),
    "trainer": ("LORAPLEX_TRAINER_HOST", "LORAPLEX_TRAINER_PORT"),
    "evaluator": ("LORAPLEX_EVALUATOR_HOST", "LORAPLEX_EVALUATOR_PORT"),
}
# Variables a loraplex container may get that are not LORAPLEX_ settings: read by libraries.
NON_SETTING_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
    }
)
GPU = "nvidia.com/gpu"
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})
ALLOWED_RBAC = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"get", "list", "watch"},
}


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR``, parsed; raises with kustomize's message when it fails."""
    exe = kubectl()
    if exe is None:
        raise RuntimeError("kubectl is not installed")
    done = subprocess.run(
        [exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@functools.cache
def _render_cached(directory: str) -> tuple[str, ...]:
    return tuple(yaml.safe_dump(d) for d in render(Path(directory)))


def rendered(overlay: str) -> list[dict[str, Any]]:
    """A fresh copy of an overlay's rendered documents (rendered once per test session)."""
    return [yaml.safe_load(d) for d in _render_cached(str(K8S / "overlays" / overlay))]


# -- walking the documents --------------------------------------------------------------------


def ref(doc: Mapping[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_spec(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") not in WORKLOAD_KINDS:
        return None
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def pod_labels(doc: Mapping[str, Any]) -> dict[str, str]:
    return dict(doc["spec"]["template"].get("metadata", {}).get("labels", {}))


def containers(
    docs: Iterable[Mapping[str, Any]], *, init: bool = True
) -> Iterator[tuple[Mapping[str, Any], dict[str, Any], bool]]:
    """(workload, container, is_init) for every container of every workload."""
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for c in spec.get("containers", []):
            yield doc, c, False
        if init:
            for c in spec.get("initContainers", []):
                yield doc, c, True


def is_loraplex(container: Mapping[str, Any]) -> bool:
    return "loraplex" in str(container.get("image", "")).rsplit("/", 1)[-1]


def service_of(container: Mapping[str, Any]) -> str | None:
    if list(container.get("command") or ()) == ENGINE_COMMAND:
        return ENGINE
    args = tuple(container.get("args") or ())
    for prefix, service in SERVICE_OF_COMMAND.items():
        if args[: len(prefix)] == prefix:
            return service
    return None


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) or a plain map against labels."""
    match_labels = selector.get(
        "matchLabels", selector if "matchExpressions" not in selector else {}
    )
    if any(labels.get(k) != v for k, v in match_labels.items() if isinstance(v, str)):
        return False
    for expr in selector.get("matchExpressions", []):
        value, values = labels.get(expr["key"]), expr.get("values", [])
        op = expr["operator"]
        if (op == "In" and value not in values) or (op == "NotIn" and value in values):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def by_kind(docs: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Mapping[str, Any]]:
    return {d["metadata"]["name"]: d for d in by_kind(docs, kind)}


def env_sources(
    docs: Iterable[Mapping[str, Any]], container: Mapping[str, Any]
) -> dict[str, tuple[str, str]]:
    """Every variable a container gets -> (where from, value or '' for secrets)."""
    docs = list(docs)
    config_maps, secrets = named(docs, "ConfigMap"), named(docs, "Secret")
    out: dict[str, tuple[str, str]] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = config_maps.get(source["configMapRef"]["name"])
            for key, value in ((cm or {}).get("data") or {}).items():
                out[key] = (f"ConfigMap/{source['configMapRef']['name']}", str(value))
        if "secretRef" in source:
            secret = secrets.get(source["secretRef"]["name"])
            keys = {
                **((secret or {}).get("data") or {}),
                **((secret or {}).get("stringData") or {}),
            }
            for key in keys:
                out[key] = (f"Secret/{source['secretRef']['name']}", "")
    for var in container.get("env", []):
        value_from = var.get("valueFrom") or {}
        if "secretKeyRef" in value_from:
            out[var["name"]] = (f"Secret/{value_from['secretKeyRef']['name']}", "")
        elif "configMapKeyRef" in value_from:
            cm_ref = value_from["configMapKeyRef"]
            cm = config_maps.get(cm_ref["name"]) or {}
            value = str((cm.get("data") or {}).get(cm_ref["key"], ""))
            out[var["name"]] = (f"ConfigMap/{cm_ref['name']}", value)
        else:
            out[var["name"]] = ("env", str(var.get("value", "")))
    return out


def secret_keys(secret: Mapping[str, Any]) -> set[str]:
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


def mounted_secret(
    doc: Mapping[str, Any], container: Mapping[str, Any], path: str
) -> tuple[str, str, dict[str, Any]] | None:
    """(Secret name, key, the mount) behind file ``path`` in ``container``; None when no Secret
    volume mounted there provides it."""
    volumes = {v["name"]: v for v in (pod_spec(doc) or {}).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        base = mount["mountPath"].rstrip("/")
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        if mount.get("subPath"):
            if path == base:
                return secret["secretName"], _secret_key_at(secret, mount["subPath"]), mount
            continue
        if path.startswith(base + "/"):
            key = _secret_key_at(secret, path[len(base) + 1 :])
            if key:
                return secret["secretName"], key, mount
    return None


def _secret_key_at(secret: Mapping[str, Any], relative: str) -> str:
    """The Secret key a secret volume shows at ``relative`` ('' if none): items, or every key
    under its own name."""
    items = secret.get("items")
    if items is None:
        return relative if "/" not in relative else ""
    return next((i["key"] for i in items if i["path"] == relative), "")


# -- the checks ---------------------------------------------------------------------------------


def check_probes(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """A container that listens on a port has readiness and liveness probes; HTTP ones use HTTP."""
    problems = []
    for doc, c, init in containers(docs, init=False):
        ports = c.get("ports") or []
        if init or not ports:
            continue
        where = f"{ref(doc)} container {c['name']}"
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                problems.append(
                    f"{where}: serves on {ports[0].get('containerPort')} but has no {probe}"
                )
        http_ports = {p.get("name") for p in ports if p.get("name") == "http"}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = c.get(probe)
            if http_ports and spec and "httpGet" not in spec:
                problems.append(f"{where}: {probe} of an HTTP container is not an httpGet probe")
    return problems


def check_server(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The server: long startup probe, /ready readiness, /health liveness, /dev/shm in memory."""
    problems = []
    for doc, c, init in containers(docs, init=False):
        if init or not is_loraplex(c) or service_of(c) != "server":
            continue
        where = f"{ref(doc)} container {c['name']}"
        startup = c.get("startupProbe") or {}
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        if budget < 600:
            problems.append(f"{where}: startupProbe allows {budget}s; model loading needs >= 600s")
        if (c.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/ready":
            problems.append(f"{where}: readinessProbe must GET /ready")
        if (c.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/health":
            problems.append(f"{where}: livenessProbe must GET /health")
        spec = pod_spec(doc) or {}
        shm = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == "/dev/shm"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        if not shm or volumes.get(shm[0]["name"], {}).get("emptyDir", {}).get("medium") != "Memory":
            problems.append(f"{where}: /dev/shm must be an emptyDir with medium Memory")
    return problems


def check_resources(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every container, init containers too: CPU and memory requests, a memory limit, and GPU
    requests equal to GPU limits."""
    problems = []
    for doc, c, _init in containers(docs):
        where = f"{ref(doc)} container {c['name']}"
        resources = c.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for key in ("cpu", "memory"):
            if key not in requests:
                problems.append(f"{where}: no {key} request")
        if "memory" not in limits:
            problems.append(f"{where}: no memory limit")
        if (GPU in requests or GPU in limits) and str(requests.get(GPU)) != str(limits.get(GPU)):
            problems.append(f"{where}: GPU request {requests.get(GPU)} != limit {limits.get(GPU)}")
    return problems


_PINNED_TAG = re.compile(r"^v?\d+(\.\d+)+([-.+_][0-9A-Za-z.\-_]+)?$")


def image_problem(image: str) -> str | None:
    """None when ``image`` is pinned: a digest, or an exact version tag (never latest)."""
    if "@sha256:" in image:
        return None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return f"image {image} has no tag"
    if tag == "latest" or not _PINNED_TAG.match(tag):
        return f"image {image} is not pinned to an exact version tag or digest"
    return None


def check_images(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    problems = []
    for doc, c, _init in containers(docs):
        problem = image_problem(str(c.get("image", "")))
        if problem:
            problems.append(f"{ref(doc)} container {c['name']}: {problem}")
    return problems


def check_security(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Restricted Pod Security Standard essentials: non-root, no escalation, no capabilities."""
    problems = []
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
            problems.append(f"{ref(doc)}: pod does not set runAsNonRoot")
    for doc, c, _init in containers(docs):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{ref(doc)} container {c['name']}: allowPrivilegeEscalation not false")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            problems.append(f"{ref(doc)} container {c['name']}: capabilities not dropped")
        if c.get("command") and list(c["command"][:2]) != INIT_PREFIX:
            problems.append(
                f"{ref(doc)} container {c['name']}: sets command, replacing the image's entrypoint"
            )
    return problems


def check_selectors(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Workload selectors match their templates; Services and PDBs select a workload; every
    workload has a PDB; Service target ports exist on the selected pods."""
    docs = list(docs)
    problems = []
    workloads = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]
    for w in workloads:
        if not selector_matches(w["spec"]["selector"], pod_labels(w)):
            problems.append(f"{ref(w)}: spec.selector does not match its pod template labels")
    for svc in by_kind(docs, "Service"):
        selected = [
            w for w in workloads if selector_matches(svc["spec"].get("selector", {}), pod_labels(w))
        ]
        if not selected:
            problems.append(f"{ref(svc)}: selects no workload")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for w in selected:
                ports = [p for c in (pod_spec(w) or {})["containers"] for p in c.get("ports", [])]
                if not any(target in (p.get("name"), p.get("containerPort")) for p in ports):
                    problems.append(f"{ref(svc)}: targetPort {target} is not a port of {ref(w)}")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for pdb in pdbs:
        if not any(selector_matches(pdb["spec"]["selector"], pod_labels(w)) for w in workloads):
            problems.append(f"{ref(pdb)}: selects no workload")
    for w in workloads:
        if not any(selector_matches(p["spec"]["selector"], pod_labels(w)) for p in pdbs):
            problems.append(f"{ref(w)}: no PodDisruptionBudget selects it")
    return problems


def check_references(
    docs: Iterable[Mapping[str, Any]], external_secrets: Iterable[str] = ()
) -> list[str]:
    """Names that must resolve: ConfigMaps, Secrets, PVCs, service accounts, roles, Ingress
    backends. Secrets listed in ``external_secrets`` are created by the operator."""
    docs = list(docs)
    problems = []
    config_maps, secrets = set(named(docs, "ConfigMap")), set(named(docs, "Secret"))
    secrets |= set(external_secrets)
    claims, accounts = set(named(docs, "PersistentVolumeClaim")), set(named(docs, "ServiceAccount"))
    for doc, c, _init in containers(docs):
        where = f"{ref(doc)} container {c['name']}"
        for source in c.get("envFrom", []):
            if "configMapRef" in source and source["configMapRef"]["name"] not in config_maps:
                problems.append(
                    f"{where}: ConfigMap {source['configMapRef']['name']} does not exist"
                )
            optional = source.get("secretRef", {}).get("optional", False)
            if (
                "secretRef" in source
                and source["secretRef"]["name"] not in secrets
                and not optional
            ):
                problems.append(f"{where}: Secret {source['secretRef']['name']} does not exist")
        for var in c.get("env", []):
            key_ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if key_ref:
                problems += _secret_ref_problems(
                    docs,
                    f"{where} {var['name']}",
                    key_ref["name"],
                    [key_ref["key"]],
                    secrets,
                    optional=key_ref.get("optional", False),
                )
        volumes = {v["name"] for v in (pod_spec(doc) or {}).get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for mount in c.get("volumeMounts", []):
            if mount["name"] not in volumes:
                problems.append(f"{where}: mounts undefined volume {mount['name']}")
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                secret = volume["secret"]
                problems += _secret_ref_problems(
                    docs,
                    f"{ref(doc)} volume {volume['name']}",
                    secret["secretName"],
                    [i["key"] for i in secret.get("items", [])],
                    secrets,
                    optional=secret.get("optional", False),
                )
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in claims:
                problems.append(f"{ref(doc)}: PersistentVolumeClaim {claim} does not exist")
        account = spec.get("serviceAccountName")
        if account and account not in accounts:
            problems.append(f"{ref(doc)}: ServiceAccount {account} does not exist")
    for sm in by_kind(docs, "ServiceMonitor"):
        for endpoint in sm["spec"].get("endpoints", []):
            credentials = (endpoint.get("authorization") or {}).get("credentials")
            if credentials and credentials.get("name"):
                problems += _secret_ref_problems(
                    docs,
                    f"{ref(sm)} authorization",
                    credentials["name"],
                    [credentials.get("key", "")],
                    secrets,
                    optional=credentials.get("optional", False),
                )
    roles = set(named(docs, "Role"))
    for binding in by_kind(docs, "RoleBinding"):
        if binding["roleRef"]["kind"] != "Role" or binding["roleRef"]["name"] not in roles:
            problems.append(f"{ref(binding)}: binds {binding['roleRef']['name']}, not a Role here")
        for subject in binding.get("subjects", []):
            if subject["kind"] == "ServiceAccount" and subject["name"] not in accounts:
                problems.append(f"{ref(binding)}: ServiceAccount {subject['name']} does not exist")
    services = named(docs, "Service")
    for ingress in by_kind(docs, "Ingress"):
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                port_names = {p.get("name") for p in (svc or {}).get("spec", {}).get("ports", [])}
                if svc is None or backend["port"].get("name") not in port_names:
                    problems.append(f"{ref(ingress)}: backend {backend} does not exist")
                if path["path"].startswith(("/admin", "/metrics", "/ready", "/health")):
                    problems.append(f"{ref(ingress)}: exposes internal path {path['path']}")
    return problems


def _secret_ref_problems(
    docs: Iterable[Mapping[str, Any]],
    where: str,
    name: str,
    keys: Iterable[str],
    known: set[str],
    *,
    optional: bool,
) -> list[str]:
    """A reference to Secret ``name`` (and its ``keys``): it exists (rendered here or created by
    the operator), and a rendered one has the keys."""
    if optional:
        return []
    if name not in known:
        return [f"{where}: Secret {name} does not exist"]
    rendered_secret = named(docs, "Secret").get(name)
    if rendered_secret is None:
        return []
    have = secret_keys(rendered_secret)
    return [f"{where}: Secret {name} has no key {k}" for k in keys if k not in have]


def check_rbac(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Namespaced Roles only, no wildcards, nothing beyond the trainer worker's Job needs."""
    problems = []
    for doc in docs:
        if doc["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
            problems.append(f"{ref(doc)}: cluster-wide RBAC is not allowed")
        if doc["kind"] != "Role":
            continue
        for rule in doc.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    allowed = ALLOWED_RBAC.get((group, resource), set())
                    extra = set(rule.get("verbs", [])) - allowed
                    if extra:
                        problems.append(f"{ref(doc)}: {extra} on {group or 'core'}/{resource}")
    return problems


def check_autoscalers(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """ScaledObjects and HPAs target existing Deployments (at most one autoscaler each, and the
    Deployment leaves replicas to it); Prometheus queries filter on their own namespace."""
    docs = list(docs)
    problems = []
    deployments = named(docs, "Deployment")
    targeted: dict[str, list[str]] = {}
    for doc in by_kind(docs, "ScaledObject") + by_kind(docs, "HorizontalPodAutoscaler"):
        target = doc["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment" or target["name"] not in deployments:
            problems.append(f"{ref(doc)}: scales {target}, which does not exist")
            continue
        targeted.setdefault(target["name"], []).append(ref(doc))
        if "replicas" in deployments[target["name"]]["spec"]:
            problems.append(
                f"{ref(doc)}: Deployment {target['name']} sets replicas; the autoscaler owns them"
            )
        namespace = doc["metadata"].get("namespace")
        for trigger in doc["spec"].get("triggers", []):
            query = trigger.get("metadata", {}).get("query", "")
            found = re.findall(r'namespace="([^"]*)"', query)
            if namespace and found != [namespace]:
                problems.append(f"{ref(doc)}: query filters namespace {found}, not {namespace}")
    for name, owners in targeted.items():
        if len(owners) > 1:
            problems.append(f"Deployment/{name} has several autoscalers: {owners}")
    return problems


def check_service_monitors(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Each ServiceMonitor selects Services in its namespace that have the scraped port, scrapes
    /metrics on the port each service serves it on, and sends a bearer token from a Secret
    (``authorization.credentials``): /metrics needs a key with the metrics scope."""
    docs = list(docs)
    problems = []
    workloads = [d for d in docs if pod_spec(d) is not None]
    for sm in by_kind(docs, "ServiceMonitor"):
        namespace = sm["metadata"].get("namespace")
        services = [
            s
            for s in by_kind(docs, "Service")
            if s["metadata"].get("namespace") == namespace
            and selector_matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        if not services:
            problems.append(f"{ref(sm)}: selects no Service in namespace {namespace}")
        for endpoint in sm["spec"].get("endpoints", []):
            if endpoint.get("path", "/metrics") != "/metrics":
                problems.append(f"{ref(sm)}: scrapes {endpoint.get('path')}, not /metrics")
            auth = endpoint.get("authorization") or {}
            credentials = auth.get("credentials") or {}
            if str(auth.get("type", "Bearer")).lower() != "bearer" or not (
                credentials.get("name") and credentials.get("key")
            ):
                problems.append(
                    f"{ref(sm)}: endpoint {endpoint.get('port')} has no bearer credentials "
                    "(authorization: {type: Bearer, credentials: {name, key}}); /metrics "
                    "answers 401 without a key"
                )
            for svc in services:
                port = next(
                    (p for p in svc["spec"]["ports"] if p.get("name") == endpoint.get("port")),
                    None,
                )
                if port is None:
                    problems.append(f"{ref(sm)}: {ref(svc)} has no port {endpoint.get('port')}")
                    continue
                target = port.get("targetPort", port["port"])
                for w in workloads:
                    if not selector_matches(svc["spec"].get("selector", {}), pod_labels(w)):
                        continue
                    for c in (pod_spec(w) or {}).get("containers", []):
                        for cp in c.get("ports", []):
                            if target not in (cp.get("name"), cp.get("containerPort")):
                                continue
                            metrics = METRICS_PORTS.get(service_of(c) or "")
                            if cp.get("containerPort") != metrics:
                                problems.append(
                                    f"{ref(sm)}: scrapes {ref(w)} on {cp.get('containerPort')}, "
                                    f"not its metrics port {metrics}"
                                )
    return problems


def check_keys(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The key configuration reaches the containers that check keys, and only those.

    Every loraplex container that listens reads its keys from ``LORAPLEX_KEYS_FILE``, a file of
    the read-only mounted Secret loraplex-keys (key keys.json): without keys it refuses to bind
    beyond loopback. A container that listens on nothing gets no key file (it holds every key in
    clear). Evaluator containers get ``LORAPLEX_SERVER_API_KEY`` from a Secret. No key comes
    from a literal value or a ConfigMap, and loraplex-keys is never turned into environment."""
    docs = list(docs)
    problems = []
    for doc, c, init in containers(docs):
        if not is_loraplex(c):
            continue
        where = f"{ref(doc)} container {c['name']}"
        env = env_sources(docs, c)
        for name in sorted(KEY_ENV & set(env)):
            source = env[name][0]
            if not source.startswith("Secret/"):
                problems.append(f"{where}: {name} comes from {source}; keys belong in a Secret")
        for source in c.get("envFrom", []):
            if source.get("secretRef", {}).get("name") == KEYS_SECRET:
                problems.append(
                    f"{where}: takes Secret {KEYS_SECRET} as environment; mount it as a file"
                )
        volumes = {v["name"]: v for v in (pod_spec(doc) or {}).get("volumes", [])}
        keys_mounts = [
            m
            for m in c.get("volumeMounts", [])
            if (volumes.get(m["name"], {}).get("secret") or {}).get("secretName") == KEYS_SECRET
        ]
        path = env.get(KEYS_FILE_ENV, ("", ""))[1]
        # An engine checks no key: the NetworkPolicy keeps everyone but the server out.
        listens = bool(c.get("ports")) and not init and service_of(c) != ENGINE
        if listens:
            port = c["ports"][0].get("containerPort")
            found = mounted_secret(doc, c, path) if path else None
            if not path:
                problems.append(
                    f"{where}: listens on {port} but has no {KEYS_FILE_ENV}; without keys the "
                    "service refuses to bind beyond loopback"
                )
            elif found is None:
                problems.append(
                    f"{where}: {KEYS_FILE_ENV} {path} is not a file of a mounted Secret"
                )
            elif found[:2] != (KEYS_SECRET, KEYS_SECRET_KEY):
                problems.append(
                    f"{where}: {KEYS_FILE_ENV} {path} is key {found[1]} of Secret {found[0]}, "
                    f"not {KEYS_SECRET_KEY} of {KEYS_SECRET}"
                )
            elif not found[2].get("readOnly"):
                problems.append(
                    f"{where}: the key file's mount {found[2]['mountPath']} is not readOnly"
                )
        elif keys_mounts or path:
            problems.append(
                f"{where}: listens on nothing yet gets the key file ({KEYS_SECRET}, every key in "
                "clear); only containers that check keys mount it"
            )
        if service_of(c) == "evaluator" and not init:
            var = next((v for v in c.get("env", []) if v["name"] == EVALUATOR_SERVER_KEY_ENV), None)
            key_ref = ((var or {}).get("valueFrom") or {}).get("secretKeyRef")
            if not key_ref or key_ref.get("optional"):
                problems.append(
                    f"{where}: no {EVALUATOR_SERVER_KEY_ENV} from a required secretKeyRef; the "
                    "server refuses the evaluator's requests without it"
                )
    return problems


def check_known_env(docs: Iterable[Mapping[str, Any]], known: frozenset[str]) -> list[str]:
    """Every LORAPLEX_ name a manifest sets (ConfigMap and Secret keys, container env, envFrom
    prefixes) is in ``known`` (shared/env_names.py KNOWN_VARIABLES): start-up stops on any
    other."""
    docs = list(docs)
    problems = []

    def unknown(name: str) -> bool:
        return name.startswith("LORAPLEX_") and name not in known

    for doc in docs:
        if doc.get("kind") not in {"ConfigMap", "Secret"}:
            continue
        for field in ("data", "stringData", "binaryData"):
            for name in doc.get(field) or {}:
                if unknown(name):
                    problems.append(f"{ref(doc)}: {name} is not a variable loraplex knows")
    config_maps, secrets = named(docs, "ConfigMap"), named(docs, "Secret")
    for doc, c, _init in containers(docs):
        where = f"{ref(doc)} container {c['name']}"
        for var in c.get("env", []):
            if unknown(var["name"]):
                problems.append(f"{where}: {var['name']} is not a variable loraplex knows")
        for source in c.get("envFrom", []):
            prefix = source.get("prefix", "")
            if not prefix:
                continue
            if "configMapRef" in source:
                keys = set(
                    (config_maps.get(source["configMapRef"]["name"]) or {}).get("data") or {}
                )
            else:
                keys = secret_keys(secrets.get(source["secretRef"]["name"]) or {})
            for name in sorted(prefix + k for k in keys):
                if unknown(name):
                    problems.append(f"{where}: {name} is not a variable loraplex knows")
    return problems


# -- who can reach what (NetworkPolicy) ---------------------------------------------------------

TCP = "TCP"


def namespace_labels(docs: Iterable[Mapping[str, Any]], name: str) -> dict[str, str]:
    """A namespace's labels: the rendered Namespace's, plus the name label Kubernetes sets."""
    ns = named(docs, "Namespace").get(name) or {}
    return {**(ns.get("metadata", {}).get("labels") or {}), "kubernetes.io/metadata.name": name}


def ingress_ports(
    docs: Iterable[Mapping[str, Any]],
    workload: Mapping[str, Any],
    source_namespace: Mapping[str, str] | None = None,
    source_pod: Mapping[str, str] | None = None,
) -> set[tuple[str, int]] | None:
    """The (protocol, port)s of ``workload``'s pods that a source pod may open under the
    rendered NetworkPolicies; None: every port. The source is in a namespace with the labels
    ``source_namespace`` (None: the workload's own) and has the labels ``source_pod`` (None:
    unknown, so any peer that names pods in its namespace counts as admitting it)."""
    docs = list(docs)
    namespace = workload["metadata"].get("namespace", "")
    own = namespace_labels(docs, namespace)
    source_ns = dict(source_namespace) if source_namespace is not None else own
    labels = pod_labels(workload)
    policies = [
        p
        for p in by_kind(docs, "NetworkPolicy")
        if p["metadata"].get("namespace", "") == namespace
        and selector_matches(p["spec"].get("podSelector") or {}, labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not policies:
        return None  # not isolated for ingress
    reach: set[tuple[str, int]] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            if not _admits(rule.get("from"), source_ns, source_pod, own):
                continue
            if not rule.get("ports"):
                return None
            for port in rule["ports"]:
                resolved = _policy_port(port, workload)
                if resolved is None:
                    return None
                reach |= resolved
    return reach


def _admits(
    peers: list[dict[str, Any]] | None,
    source_ns: Mapping[str, str],
    source_pod: Mapping[str, str] | None,
    own_ns: Mapping[str, str],
) -> bool:
    if not peers:
        return True  # no "from": every source
    for peer in peers:
        if "ipBlock" in peer:
            return True  # any address, pods of every namespace included
        ns_selector = peer.get("namespaceSelector")
        if ns_selector is None:
            in_namespace = source_ns.get("kubernetes.io/metadata.name") == own_ns.get(
                "kubernetes.io/metadata.name"
            )
        else:
            in_namespace = selector_matches(ns_selector, source_ns)
        pod_selector = peer.get("podSelector")
        pod_ok = (
            pod_selector is None or source_pod is None or selector_matches(pod_selector, source_pod)
        )
        if in_namespace and pod_ok:
            return True
    return False


def _policy_port(
    port: Mapping[str, Any], workload: Mapping[str, Any]
) -> set[tuple[str, int]] | None:
    protocol = port.get("protocol", TCP)
    number = port.get("port")
    if number is None:
        return None  # every port of that protocol
    if isinstance(number, str):  # a named port: whatever the pod's containers call so
        return {
            (cp.get("protocol", TCP), cp["containerPort"])
            for c in (pod_spec(workload) or {}).get("containers", [])
            for cp in c.get("ports", [])
            if cp.get("name") == number and cp.get("protocol", TCP) == protocol
        }
    return {(protocol, n) for n in range(int(number), int(port.get("endPort", number)) + 1)}


def metrics_ports(workload: Mapping[str, Any]) -> set[tuple[str, int]]:
    """Where a workload's pods serve /metrics: the API port of each loraplex container."""
    return {
        (TCP, METRICS_PORTS[service_of(c) or ""])
        for c in (pod_spec(workload) or {}).get("containers", [])
        if is_loraplex(c) and c.get("ports") and service_of(c) in METRICS_PORTS
    }


def check_monitoring_network(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The monitoring namespace reaches the metrics port of each service and nothing else: no
    other port, no worker, no database, no engine."""
    docs = list(docs)
    problems = []
    for w in docs:
        if pod_spec(w) is None:
            continue
        allowed = metrics_ports(w)
        wanted = ", ".join(str(p) for _, p in sorted(allowed)) or "none (it serves no metrics)"
        reach = ingress_ports(docs, w, MONITORING_NAMESPACE)
        if reach is None:
            problems.append(
                f"{ref(w)}: the monitoring namespace reaches every port; metrics port: {wanted}"
            )
            continue
        if extra := reach - allowed:
            ports = ", ".join(f"{p}/{proto}" for proto, p in sorted(extra))
            problems.append(
                f"{ref(w)}: the monitoring namespace reaches {ports}; metrics port: {wanted}"
            )
        if missing := allowed - reach:
            ports = ", ".join(str(p) for _, p in sorted(missing))
            problems.append(f"{ref(w)}: the monitoring namespace cannot reach metrics port {ports}")
    return problems


def check_env_settings(
    docs: Iterable[Mapping[str, Any]], allowed: Mapping[str, frozenset[str]]
) -> list[str]:
    """Every LORAPLEX_ variable a loraplex container gets is a field of its service's settings
    (``allowed``: service -> variable names); other variables must be known library ones.
    Services missing from ``allowed`` are not checked."""
    docs = list(docs)
    problems = []
    for doc, c, _init in containers(docs):
        if not is_loraplex(c):
            continue
        service = service_of(c)
        where = f"{ref(doc)} container {c['name']}"
        if service is None:
            problems.append(f"{where}: args {c.get('args')} name no known loraplex command")
            continue
        if service not in allowed:
            continue
        for name, (source, _value) in env_sources(docs, c).items():
            if name.startswith("LORAPLEX_"):
                if name not in allowed[service]:
                    problems.append(f"{where}: {name} (from {source}) is not a {service} setting")
            elif name not in NON_SETTING_ENV:
                problems.append(f"{where}: {name} (from {source}) is not a known variable")
    return problems


def check_ports(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Each service listens where its LORAPLEX_PORT says, on its agreed port."""
    docs = list(docs)
    problems = []
    for doc, c, init in containers(docs, init=False):
        if init or not is_loraplex(c) or not c.get("ports") or service_of(c) == ENGINE:
            continue  # an engine binds through its arguments: check_engines
        where = f"{ref(doc)} container {c['name']}"
        service = service_of(c)
        expected = SERVICE_PORTS.get(service or "")
        declared = [p["containerPort"] for p in c["ports"]]
        env = env_sources(docs, c)
        host_var, port_var = SERVICE_BIND_ENV.get(service or "", ("", ""))
        configured = env.get(port_var, ("", ""))[1]
        host = env.get(host_var, ("", ""))[1]
        if declared != [expected] or configured != str(expected):
            problems.append(
                f"{where}: {service} must listen on {expected}; containerPort {declared}, "
                f"{port_var or 'port setting'} {configured or 'unset'}"
            )
        if host not in {"0.0.0.0", "::"}:
            problems.append(f"{where}: {host_var} is {host or 'unset'}; pods must bind all")
    return problems


def _arg(args: list[str], flag: str) -> str | None:
    """The value after ``flag`` in a command line (None: absent)."""
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def check_engines(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """A full fine-tune's engine pod: labelled as an engine, serving on its declared port on every
    address under a model name, without LoRA slots, with no loraplex setting or credential in its
    environment (it checks no key), and reachable from the server pods only: no other loraplex
    pod, no other namespace."""
    docs = list(docs)
    problems = []
    for doc, c, init in containers(docs, init=False):
        if init or service_of(c) != ENGINE:
            continue
        where = f"{ref(doc)} container {c['name']}"
        args = [str(a) for a in c.get("args") or []]
        ports = [p["containerPort"] for p in c.get("ports") or []]
        if not selector_matches(ENGINE_LABEL, pod_labels(doc)):
            problems.append(f"{where}: its pods lack {ENGINE_LABEL}; loraplex-engines misses them")
        if _arg(args, "--host") not in {"0.0.0.0", "::"}:
            problems.append(f"{where}: --host is {_arg(args, '--host')}; the server is elsewhere")
        port = _arg(args, "--port")
        if port is None or [int(port)] != ports:
            problems.append(f"{where}: --port {port} is not its containerPort {ports}")
        if not _arg(args, "--served-model-name") or not _arg(args, "--model"):
            problems.append(f"{where}: no --model/--served-model-name; the server routes by it")
        if "--enable-lora" in args:
            problems.append(f"{where}: --enable-lora; a full model's engine needs no LoRA slots")
        for name, (source, _value) in env_sources(docs, c).items():
            if name.startswith("LORAPLEX_") or source.startswith("Secret/"):
                problems.append(f"{where}: gets {name} from {source}; an engine needs neither")
        if not ports:
            continue
        wanted = {(TCP, ports[0])}
        from_server = ingress_ports(docs, doc, source_pod=SERVER_POD)
        if from_server is not None and not wanted <= from_server:
            problems.append(f"{where}: the server pods cannot reach port {ports[0]}")
        others = [
            ("another loraplex pod", None, {"app.kubernetes.io/name": "loraplex"}),
            ("another namespace", {"kubernetes.io/metadata.name": "elsewhere"}, SERVER_POD),
        ]
        for label, namespace, pod in others:
            reach = ingress_ports(docs, doc, namespace, pod)
            if reach is None or reach:
                shown = "every port" if reach is None else sorted(p for _, p in reach)
                problems.append(f"{where}: {label} reaches {shown}; only the server may")
    return problems


ALL_CHECKS = (
    check_probes,
    check_server,
    check_resources,
    check_images,
    check_security,
    check_selectors,
    check_rbac,
    check_autoscalers,
    check_service_monitors,
    check_ports,
    check_keys,
    check_monitoring_network,
    check_engines,
)


# Secrets each overlay may leave to the operator; the dev overlay must be self-contained.
OVERLAY_EXTERNAL_SECRETS = {"cpu-dev": frozenset(), "gpu": EXTERNAL_SECRETS}


def invariant_problems(
    docs: list[dict[str, Any]], external_secrets: Iterable[str] = ()
) -> list[str]:
    """Every settings-independent check on one rendered overlay."""
    problems = [p for check in ALL_CHECKS for p in check(docs)]
    problems += check_known_env(docs, KNOWN_VARIABLES)
    return problems + check_references(docs, external_secrets)
