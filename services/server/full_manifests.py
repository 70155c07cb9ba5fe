"""Kubernetes manifests of one full fine-tune's engine: a Deployment, its Service and its
PodDisruptionBudget (``loraplex adapters engine-manifest VERSION``).

A version id is runtime data, so these objects are generated, like the trainer's Jobs, not kept
in kustomize. The pod fetches the version's folder from the artifact store with
``loraplex adapters export VERSION --merged DIR`` (verified against the registry's sha256) into an
emptyDir, then runs vLLM's OpenAI server on it under the version id, without LoRA, as the
server's own full engines run (``engine_process.engine_command(lora=False)``). The server
watches it through ``LORAPLEX_FULL_ENGINE_URLS`` (``full_engine_url``); the base's NetworkPolicy
``loraplex-engines`` lets only server pods reach pods labelled ``component: engine``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer
import yaml

from services.server.config import ServerSettings
from shared.errors import ValidationError
from shared.registry.names import VERSION_ID_RE

PORT = 8000
MODEL_DIR = "/var/lib/loraplex-model"
# The folder the init container writes; its parent is the emptyDir (export writes a temporary
# sibling, then renames it).
MODEL_PATH = f"{MODEL_DIR}/model"
# Kept as PID 1 so that signals reach vLLM and its workers are reaped (the image's entrypoint
# runs `loraplex`, which has no engine command).
ENGINE_COMMAND = ["/usr/bin/tini", "--", "python", "-m", "vllm.entrypoints.openai.api_server"]
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def engine_name(version_id: str) -> str:
    """The Deployment and Service name of a version's engine: a DNS label, unique per id (the
    hash keeps ``a_b@v1`` and ``a-b@v1`` apart)."""
    if not VERSION_ID_RE.match(version_id):
        raise ValidationError(f"{version_id!r} is not a version id (NAME@vN)", param="version")
    slug = re.sub(r"[^a-z0-9]+", "-", version_id).strip("-")[:32].rstrip("-")
    digest = hashlib.sha256(version_id.encode()).hexdigest()[:8]
    return f"loraplex-full-{slug}-{digest}"


def full_engine_url(version_id: str) -> str:
    """The in-cluster URL of the version's engine Service, for ``LORAPLEX_FULL_ENGINE_URLS``."""
    return f"http://{engine_name(version_id)}:{PORT}"


def engine_args(version_id: str, settings: ServerSettings, *, gpus: int) -> list[str]:
    """vLLM's arguments: the fetched folder under the version id, no LoRA; eager on CPU, where
    vLLM's compilation warm-up takes minutes (engine_process.engine_command)."""
    args = [
        "--model",
        MODEL_PATH,
        "--served-model-name",
        version_id,
        "--host",
        "0.0.0.0",
        "--port",
        str(PORT),
        "--max-model-len",
        str(settings.max_model_len),
        "--max-num-seqs",
        str(settings.max_num_seqs),
        "--dtype",
        settings.dtype,
        "--disable-uvicorn-access-log",
    ]
    if gpus == 0:
        args.append("--enforce-eager")
    elif settings.gpu_memory_utilization != 0.9:
        args += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    return args


def full_engine_manifests(
    version_id: str,
    settings: ServerSettings,
    *,
    image: str,
    namespace: str | None = None,
    config_maps: Sequence[str] = ("loraplex-config",),
    secrets: Sequence[str] = ("loraplex-database",),
    volume_claims: Mapping[str, str] | None = None,
    gpus: int = 0,
    cpu: str = "2",
    memory: str = "8Gi",
    model_size: str = "40Gi",
) -> list[dict[str, Any]]:
    """Deployment, Service and PodDisruptionBudget of ``version_id``'s engine.

    ``config_maps``/``secrets``/``volume_claims`` reach the fetch step only (registry and
    artifact store: loraplex-s3 with S3, the artifacts claim with a volume); the engine gets
    no loraplex setting and no credential.
    """
    for field, value in (("cpu", cpu), ("memory", memory), ("model_size", model_size)):
        if not _QUANTITY.match(value):
            raise ValidationError(f"{field} {value!r} is not a Kubernetes quantity", param=field)
    if gpus < 0:
        raise ValidationError(f"gpus {gpus} is negative", param="gpus")
    name = engine_name(version_id)
    labels = {
        "app.kubernetes.io/name": "loraplex",
        "app.kubernetes.io/component": "engine",
        "loraplex.io/engine": name,
    }
    meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    meta["annotations"] = {"loraplex.io/version": version_id}
    if namespace:
        meta["namespace"] = namespace
    claims = dict(volume_claims or {})
    scratch = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": "/home/loraplex"},
    ]
    fetch = {
        "name": "fetch-model",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        # --force: the emptyDir outlives a restart of the pod's containers.
        "args": ["adapters", "export", version_id, "--merged", MODEL_PATH, "--force"],
        "envFrom": [{"configMapRef": {"name": n}} for n in config_maps]
        + [{"secretRef": {"name": n}} for n in secrets],
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "securityContext": dict(_RESTRICTED),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_DIR},
            {"name": "data", "mountPath": "/var/lib/loraplex"},
            *scratch,
        ]
        + [{"name": f"claim-{i}", "mountPath": p} for i, p in enumerate(claims.values())],
    }
    probe = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5}
    gpu = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    engine = {
        "name": "engine",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(ENGINE_COMMAND),
        "args": engine_args(version_id, settings, gpus=gpus),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [
            {"name": "VLLM_CPU_KVCACHE_SPACE", "value": str(settings.full_kv_cache_gib)},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": {
            "requests": {"cpu": cpu, "memory": memory, **gpu},
            "limits": {"memory": memory, **gpu},
        },
        # Loading and warm-up take minutes (CUDA graphs on GPU): up to 30 before liveness.
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 4},
        "securityContext": dict(_RESTRICTED),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
            *scratch,
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "model", "emptyDir": {"sizeLimit": model_size}},
        # LORAPLEX_DATA_DIR of the fetch step: an S3 store reads the folder through its cache
        # there before the copy, so it can hold a whole model too.
        {"name": "data", "emptyDir": {"sizeLimit": model_size}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "5Gi"}},
        {"name": "home", "emptyDir": {"sizeLimit": "5Gi"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    ]
    volumes += [
        {"name": f"claim-{i}", "persistentVolumeClaim": {"claimName": c}}
        for i, c in enumerate(claims)
    ]
    pod: dict[str, Any] = {
        "serviceAccountName": "loraplex",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [fetch],
        "containers": [engine],
        "volumes": volumes,
    }
    if gpus:
        pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": json.loads(json.dumps(meta)),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(labels),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": json.loads(json.dumps(meta)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(labels)}},
    }
    return [deployment, service, pdb]


def engine_manifest_cmd(
    version: Annotated[str, typer.Argument(help="Full version id (name@vN).")],
    image: Annotated[str, typer.Option(help="The loraplex image (the server's own tag).")],
    namespace: Annotated[str | None, typer.Option(help="Namespace of the objects.")] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(
            help="Secret for the fetch step's environment (repeatable; default "
            "loraplex-database; add loraplex-s3 with S3 artifacts)."
        ),
    ] = None,
    claim: Annotated[
        list[str] | None,
        typer.Option(
            help="CLAIM=PATH mounted in the fetch step (repeatable; the artifacts "
            "claim with a volume store, e.g. loraplex-artifacts=/artifacts)."
        ),
    ] = None,
    gpus: Annotated[int, typer.Option(help="GPUs of the engine (0: vLLM on CPU).")] = 0,
    cpu: Annotated[str, typer.Option(help="CPU request of the engine.")] = "2",
    memory: Annotated[str, typer.Option(help="Memory request and limit of the engine.")] = "8Gi",
) -> None:
    """Print the engine Deployment, Service and PodDisruptionBudget that serve full version
    VERSION on its own (kubectl apply -f -); the LORAPLEX_FULL_ENGINE_URLS entry goes to
    stderr. Engine settings (max model len, dtype, KV cache) come from LORAPLEX_* as for serve."""
    from services.server.cli_aliases import _settings

    claims: dict[str, str] = {}
    for item in claim or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path.startswith("/"):
            typer.secho(
                f"error: --claim {item!r} is not CLAIM=/PATH", fg=typer.colors.RED, err=True
            )
            raise typer.Exit(2)
        claims[name] = path
    try:
        docs = full_engine_manifests(
            version,
            _settings(),
            image=image,
            namespace=namespace,
            secrets=secret or ["loraplex-database"],
            volume_claims=claims,
            gpus=gpus,
            cpu=cpu,
            memory=memory,
        )
    except ValidationError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)
    entry = json.dumps({version: full_engine_url(version)})
    typer.echo(f"LORAPLEX_FULL_ENGINE_URLS entry: {entry}", err=True)
