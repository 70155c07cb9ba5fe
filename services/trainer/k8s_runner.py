"""Following training jobs' Kubernetes Jobs: create, read, follow, diagnose and delete them.

:class:`KubernetesJobRunner` works through two small protocols that the official ``kubernetes``
client satisfies (``BatchV1Api``, ``CoreV1Api``), so tests pass fakes. The ``kubernetes`` package
(extra ``k8s``) is imported only by :meth:`KubernetesJobRunner.in_cluster`. The Job itself is
built by :func:`services.trainer.k8s_jobs.job_manifest`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from services.trainer.k8s_jobs import (
    JOB_ID_ANNOTATION,
    POD_JOB_LABEL,
    KubernetesJobSettings,
    job_manifest,
    resolve_namespace,
)
from shared.errors import ConfigError, ConflictError

log = logging.getLogger(__name__)


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

    def submit(self, job_id: str, *, worker_id: str | None = None, processes: int = 1) -> str:
        """Create the Job of ``job_id``, or adopt the one a previous worker created; its name.

        ``worker_id`` is the claiming worker's id, under which the Job's ``run-job`` works;
        ``processes``: the job's training processes (one GPU each on a GPU Job)."""
        body = job_manifest(
            job_id,
            self.settings,
            namespace=self.namespace,
            data_dir=self.data_dir,
            worker_id=worker_id,
            processes=processes,
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
