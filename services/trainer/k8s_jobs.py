"""Training jobs as Kubernetes Jobs: the manifest for one job, and a thin follower.

With ``LORAPLEX_K8S_ENABLED=true`` the trainer worker does not train in its own pod: for each
training job it claims, it creates one Kubernetes Job that runs ``loraplex train run-job <id>`` in
the worker's own image, with the same ConfigMaps and Secrets, and follows that Job to its end.

* :func:`job_manifest` is pure: job id + :class:`KubernetesJobSettings` -> the Job as a dict.
* :class:`KubernetesJobRunner` creates, reads, follows and deletes Jobs through two small protocols
  that the official ``kubernetes`` client satisfies (``BatchV1Api``, ``CoreV1Api``), so tests pass
  fakes. The ``kubernetes`` package (extra ``k8s``) is imported only by
  :meth:`KubernetesJobRunner.in_cluster`.

The Job name is derived from the job id alone, so a worker that restarts finds the Job its
predecessor created (create answers 409) and follows it instead of training twice.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError, ConflictError

log = logging.getLogger(__name__)

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
) -> dict[str, Any]:
    """The Kubernetes Job that runs training job ``job_id`` (``loraplex train run-job <id>``).

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

    requests: dict[str, str] = {"cpu": settings.cpu, "memory": settings.memory}
    limits: dict[str, str] = {"memory": settings.memory}
    tolerations: list[dict[str, str]] = []
    if settings.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(settings.gpus)
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


# -- following a Job -------------------------------------------------------------------------


class JobPhase(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class JobState:
    name: str
    phase: JobPhase
    active: int = 0
    failed_pods: int = 0
    reason: str = ""
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in (JobPhase.SUCCEEDED, JobPhase.FAILED)


def job_state(job: Mapping[str, Any]) -> JobState:
    """Read a Job (API form, camelCase keys) into a phase; only Complete/Failed are final."""
    name = str(job.get("metadata", {}).get("name", ""))
    status = job.get("status") or {}
    active = int(status.get("active") or 0)
    failed = int(status.get("failed") or 0)
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        reason, message = condition.get("reason") or "", condition.get("message") or ""
        if condition.get("type") == "Complete":
            return JobState(name, JobPhase.SUCCEEDED, active, failed, reason, message)
        if condition.get("type") == "Failed":
            return JobState(name, JobPhase.FAILED, active, failed, reason, message)
    # `ready` counts pods past scheduling and image pull; clusters before 1.24 lack it.
    ready = status.get("ready")
    running = int(ready) > 0 if ready is not None else active > 0
    return JobState(name, JobPhase.RUNNING if running else JobPhase.PENDING, active, failed)


class BatchApi(Protocol):
    """The part of ``kubernetes.client.BatchV1Api`` the runner uses."""

    def create_namespaced_job(self, namespace: str, body: Any) -> Any: ...

    def read_namespaced_job(self, name: str, namespace: str) -> Any: ...

    def delete_namespaced_job(
        self, name: str, namespace: str, *, propagation_policy: str
    ) -> Any: ...


class CoreApi(Protocol):
    """The part of ``kubernetes.client.CoreV1Api`` the runner uses."""

    def list_namespaced_pod(self, namespace: str, *, label_selector: str) -> Any: ...

    def read_namespaced_pod_log(self, name: str, namespace: str, *, tail_lines: int) -> Any: ...

    def list_namespaced_event(self, namespace: str, *, field_selector: str) -> Any: ...


def _status_code(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class KubernetesJobRunner:
    """Create, follow and delete the Kubernetes Jobs of training jobs in one namespace."""

    def __init__(
        self,
        settings: KubernetesJobSettings,
        batch: BatchApi,
        core: CoreApi,
        *,
        namespace: str,
        data_dir: str = "/var/lib/loraplex",
        to_dict: Callable[[Any], Mapping[str, Any]] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.batch = batch
        self.core = core
        self.namespace = namespace
        self.data_dir = data_dir
        self._to_dict = to_dict or _plain_dict
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def in_cluster(
        cls, settings: KubernetesJobSettings, *, data_dir: str = "/var/lib/loraplex"
    ) -> KubernetesJobRunner:
        """A runner on the official client: in-cluster credentials, else the local kubeconfig."""
        try:
            from kubernetes import client, config
        except ImportError as exc:
            raise ConfigError(
                "LORAPLEX_K8S_ENABLED is set but the kubernetes client is not installed; "
                "pip install 'loraplex[k8s]'",
                param="enabled",
            ) from exc
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.ApiClient()
        return cls(
            settings,
            client.BatchV1Api(api),
            client.CoreV1Api(api),
            namespace=resolve_namespace(settings),
            data_dir=data_dir,
            to_dict=api.sanitize_for_serialization,
        )

    def submit(self, job_id: str, *, worker_id: str | None = None) -> str:
        """Create the Job of ``job_id``, or adopt the one a previous worker created; its name.

        ``worker_id`` is the claiming worker's id, under which the Job's ``run-job`` works."""
        body = job_manifest(
            job_id,
            self.settings,
            namespace=self.namespace,
            data_dir=self.data_dir,
            worker_id=worker_id,
        )
        name: str = body["metadata"]["name"]
        try:
            self.batch.create_namespaced_job(self.namespace, body)
            log.info("created Job %s/%s for training job %s", self.namespace, name, job_id)
        except Exception as exc:
            if _status_code(exc) != 409:
                raise
            existing = self._to_dict(self.batch.read_namespaced_job(name, self.namespace))
            owner = (existing.get("metadata", {}).get("annotations") or {}).get(JOB_ID_ANNOTATION)
            if owner != job_id:
                raise ConflictError(
                    f"Job {self.namespace}/{name} exists but belongs to training job {owner!r}, "
                    f"not {job_id!r}",
                    param="job_id",
                ) from exc
            log.info("Job %s/%s already exists: following it", self.namespace, name)
        return name

    def state(self, name: str) -> JobState:
        try:
            job = self._to_dict(self.batch.read_namespaced_job(name, self.namespace))
        except Exception as exc:
            if _status_code(exc) != 404:
                raise
            return JobState(
                name,
                JobPhase.FAILED,
                reason="NotFound",
                message=f"Job {self.namespace}/{name} no longer exists (deleted, or removed by "
                "ttlSecondsAfterFinished before its end was seen)",
            )
        return job_state(job)

    def follow(
        self,
        name: str,
        *,
        on_change: Callable[[JobState], None] | None = None,
        timeout_s: float | None = None,
    ) -> JobState:
        """Poll the Job until it ends (or ``timeout_s`` passes); report each change of state."""
        deadline = None if timeout_s is None else self._clock() + timeout_s
        last: JobState | None = None
        while True:
            current = self.state(name)
            if current != last and on_change is not None:
                on_change(current)
            last = current
            if current.finished or (deadline is not None and self._clock() >= deadline):
                return current
            self._sleep(self.settings.poll_interval_s)

    def diagnose(self, name: str) -> list[str]:
        """Why a Job's pods are stuck or died: container terminations and warning events."""
        lines: list[str] = []
        pods = self._to_dict(
            self.core.list_namespaced_pod(self.namespace, label_selector=f"{POD_JOB_LABEL}={name}")
        ).get("items", [])
        objects = [name]
        for pod in pods:
            pod_name = pod.get("metadata", {}).get("name", "")
            objects.append(pod_name)
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (status.get("state") or {}).get("terminated") or {}
                if term and term.get("exitCode", 0) != 0:
                    lines.append(
                        f"pod {pod_name}: {term.get('reason', 'Error')} "
                        f"(exit code {term.get('exitCode')})"
                    )
        for obj in objects:
            events = self._to_dict(
                self.core.list_namespaced_event(
                    self.namespace, field_selector=f"involvedObject.name={obj}"
                )
            ).get("items", [])
            for event in events:
                if event.get("type") == "Warning":
                    lines.append(f"{obj}: {event.get('reason', '')}: {event.get('message', '')}")
        return lines

    def logs(self, name: str, *, tail_lines: int = 200) -> str:
        """The last lines of the Job's newest pod ('' while it has none)."""
        pods = self._to_dict(
            self.core.list_namespaced_pod(self.namespace, label_selector=f"{POD_JOB_LABEL}={name}")
        ).get("items", [])
        if not pods:
            return ""
        newest = max(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "")
        text = self.core.read_namespaced_pod_log(
            newest["metadata"]["name"], self.namespace, tail_lines=tail_lines
        )
        return str(text)

    def delete(self, name: str) -> None:
        """Delete the Job and its pods; a Job that is already gone is fine."""
        try:
            self.batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background")
        except Exception as exc:
            if _status_code(exc) != 404:
                raise


def _plain_dict(obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    raise TypeError(
        f"expected a dict from the Kubernetes API, got {type(obj).__name__}; pass to_dict="
        "ApiClient().sanitize_for_serialization for the official client's models"
    )
