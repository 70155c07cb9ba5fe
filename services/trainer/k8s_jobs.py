"""Training jobs as Kubernetes Jobs: the manifest for one job, and a thin follower.

With ``LORAPLEX_K8S_ENABLED=true`` the trainer worker does not train in its own pod: for each
training job it claims, it creates one Kubernetes Job that runs ``loraplex train run-job <id>`` in
the worker's own image, with the same ConfigMaps and Secrets, and follows that Job to its end.

* :func:`job_manifest` is pure: job id + :class:`KubernetesJobSettings` -> the Job as a dict.
* ``k8s_runner.KubernetesJobRunner`` creates, reads, follows and deletes those Jobs.

The Job name is derived from the job id alone, so a worker that restarts finds the Job its
predecessor created (create answers 409) and follows it instead of training twice.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

JOB_NAME_PREFIX = "loraplex-train-"
JOB_ID_ANNOTATION = "loraplex.io/training-job-id"
JOB_ID_LABEL = "loraplex.io/training-job"
# Set by the Job controller on every pod it creates.
POD_JOB_LABEL = "batch.kubernetes.io/job-name"
GPU_RESOURCE = "nvidia.com/gpu"
SERVICE_ACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# UID/GID of the `loraplex` user in deploy/docker/Dockerfile.*.
IMAGE_UID = 10001
IMAGE_HOME = "/home/loraplex"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|[KMGTPE]i?)?$")
_MAX_NAME = 63


class KubernetesJobSettings(BaseSettings):
    """How the trainer worker runs training jobs as Kubernetes Jobs (``LORAPLEX_K8S_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="LORAPLEX_K8S_", extra="ignore")

    enabled: bool = Field(
        default=False,
        description="Run each training job as a Kubernetes Job instead of in the worker's pod.",
    )
    image: str = Field(default="", description="Image of the Job; the worker's own image.")
    namespace: str = Field(
        default="", description="Namespace of the Jobs; empty: the worker's own (in-cluster)."
    )
    config_maps: list[str] = Field(
        default=["loraplex-config", "loraplex-trainer"],
        description="ConfigMaps passed to the Job as environment (envFrom), in order.",
    )
    secrets: list[str] = Field(
        default=["loraplex-database"],
        description="Secrets passed to the Job as environment (envFrom), after the ConfigMaps.",
    )
    volume_claims: dict[str, str] = Field(
        default={},
        description="PersistentVolumeClaim name -> mount path in the Job (JSON object).",
    )
    gpus: int = Field(default=0, ge=0, description="GPUs per Job (nvidia.com/gpu).")
    cpu: str = Field(default="2", description="CPU request of the Job.")
    memory: str = Field(default="8Gi", description="Memory request and limit of the Job.")
    shm_size: str = Field(default="1Gi", description="Size of the Job's /dev/shm (in memory).")
    service_account: str = Field(
        default="loraplex", description="Service account of the Job's pod (no API token mounted)."
    )
    backoff_limit: int = Field(
        default=2, ge=0, description="Pod retries; each resumes from the last checkpoint."
    )
    ttl_seconds_after_finished: int = Field(
        default=86400, ge=0, description="Finished Jobs are deleted after this many seconds."
    )
    active_deadline_seconds: int | None = Field(
        default=None, gt=0, description="Wall-clock limit of a Job; empty: none."
    )
    poll_interval_s: float = Field(
        default=10.0, gt=0, description="How often the worker reads a running Job's status."
    )

    @field_validator("cpu", "memory", "shm_size")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
        return value

    @field_validator("config_maps", "secrets")
    @classmethod
    def _object_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
                raise ValueError(f"{name!r} is not a valid ConfigMap/Secret name")
        return names

    @field_validator("volume_claims")
    @classmethod
    def _claims(cls, claims: dict[str, str]) -> dict[str, str]:
        for name, path in claims.items():
            if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
                raise ValueError(f"{name!r} is not a valid PersistentVolumeClaim name")
            if not path.startswith("/"):
                raise ValueError(f"mount path {path!r} of claim {name!r} must be absolute")
        if len(set(claims.values())) != len(claims):
            raise ValueError("two claims are mounted at the same path")
        return claims


def job_name(job_id: str) -> str:
    """The Job's name for a training job id: a DNS label, unique per id, at most 63 characters.

    An id that is already a short DNS label is used as is; any other gets a hash of the exact id
    appended, so two ids never share a Job.
    """
    if not job_id:
        raise ConfigError("a training job id is needed to name its Kubernetes Job", param="job_id")
    room = _MAX_NAME - len(JOB_NAME_PREFIX)
    if _DNS_LABEL.match(job_id) and len(job_id) <= room:
        return JOB_NAME_PREFIX + job_id
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9]+", "-", job_id.lower())[: room - len(digest) - 1].strip("-")
    return f"{JOB_NAME_PREFIX}{readable}-{digest}" if readable else JOB_NAME_PREFIX + digest


def cpu_cores(quantity: str) -> float:
    """A CPU quantity (``2``, ``500m``) in cores."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def job_labels(job_id: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "loraplex",
        "app.kubernetes.io/component": "training-job",
        "app.kubernetes.io/part-of": "loraplex",
        "app.kubernetes.io/managed-by": "loraplex-trainer",
        JOB_ID_LABEL: job_name(job_id).removeprefix(JOB_NAME_PREFIX),
    }


def job_manifest(
    job_id: str,
    settings: KubernetesJobSettings,
    *,
    namespace: str,
    data_dir: str = "/var/lib/loraplex",
    worker_id: str | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """The Kubernetes Job that runs training job ``job_id`` (``loraplex train run-job <id>``).

    ``processes``: the job's training processes. ``run-job`` starts them as ranks of ``torchrun
    --nproc-per-node <processes>`` in the pod (``services/trainer/launch.py``), so a GPU Job gets
    one GPU per process and a CPU Job at least one core per process.

    ``data_dir`` is where LORAPLEX_DATA_DIR points inside the Job: a claim in
    ``settings.volume_claims`` mounted there is used (the trainer's shared data volume), else a
    scratch emptyDir. ``worker_id``: the worker that claimed the job; ``run-job`` then acts as
    that worker (LORAPLEX_WORKER_ID) instead of claiming the job a second time.
    """
    if not settings.image:
        raise ConfigError(
            "LORAPLEX_K8S_IMAGE is empty: set it to the trainer worker's own image",
            param="image",
        )
    if not _DNS_LABEL.match(namespace):
        raise ConfigError(f"namespace {namespace!r} is not a valid namespace", param="namespace")
    name = job_name(job_id)
    labels = job_labels(job_id)

    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    for claim, path in settings.volume_claims.items():
        volume = f"claim-{hashlib.sha256(claim.encode()).hexdigest()[:8]}"
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": volume, "mountPath": path})
    scratch = {"data": data_dir, "tmp": "/tmp", "home": IMAGE_HOME}
    for volume, path in scratch.items():
        if path not in settings.volume_claims.values():
            volumes.append({"name": volume, "emptyDir": {}})
            mounts.append({"name": volume, "mountPath": path})
    # Data loader workers pass batches through shared memory; the runtime's default is 64 MiB.
    volumes.append(
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}
    )
    mounts.append({"name": "shm", "mountPath": "/dev/shm"})

    if processes < 1:
        raise ConfigError(f"{processes} training processes; at least 1", param="processes")
    gpus = processes if settings.gpus and processes > 1 else settings.gpus
    cpu = settings.cpu
    if not gpus and cpu_cores(cpu) < processes:
        cpu = str(processes)
    requests: dict[str, str] = {"cpu": cpu, "memory": settings.memory}
    limits: dict[str, str] = {"memory": settings.memory}
    tolerations: list[dict[str, str]] = []
    if gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})

    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": n}} for n in settings.config_maps]
    env_from += [{"secretRef": {"name": n}} for n in settings.secrets]
    # The Job gets the worker's ConfigMaps, which enable this executor; the job itself must
    # train in place, never start another Job.
    env = [{"name": "LORAPLEX_K8S_ENABLED", "value": "false"}]
    if worker_id:
        env.append({"name": "LORAPLEX_WORKER_ID", "value": worker_id})

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.service_account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "train",
                "image": settings.image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["train", "run-job", job_id],
                "envFrom": env_from,
                "env": env,
                "resources": {"requests": requests, "limits": limits},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if tolerations:
        pod_spec["tolerations"] = tolerations

    spec: dict[str, Any] = {
        "backoffLimit": settings.backoff_limit,
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        # Evictions and preemptions are not the job's fault: they do not use up its retries.
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                }
            ]
        },
        "template": {
            "metadata": {
                "labels": labels,
                # A cluster autoscaler must not move a pod that is mid-training.
                "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
            },
            "spec": pod_spec,
        },
    }
    if settings.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {JOB_ID_ANNOTATION: job_id},
        },
        "spec": spec,
    }


def resolve_namespace(
    settings: KubernetesJobSettings, sa_file: Path = SERVICE_ACCOUNT_NAMESPACE_FILE
) -> str:
    """The configured namespace, else the one the worker's own pod runs in."""
    if settings.namespace:
        return settings.namespace
    try:
        return sa_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"LORAPLEX_K8S_NAMESPACE is empty and {sa_file} is unreadable ({exc.strerror}): "
            "set the namespace when the worker runs outside a cluster",
            param="namespace",
        ) from exc
