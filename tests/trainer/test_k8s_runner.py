"""The runner that creates and follows the Kubernetes Job of a training job, against a fake API,
and the state it reads from a Job's status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.trainer import k8s_jobs
from services.trainer.k8s_jobs import job_manifest
from services.trainer.k8s_runner import JobPhase, JobState, KubernetesJobRunner, job_state
from shared.errors import ConflictError
from tests.trainer.test_k8s_jobs import container, gpu_settings

# -- reading a Job's status -----------------------------------------------------------------------


def _job(status: dict[str, Any], name: str = "loraplex-train-j") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ({}, JobPhase.PENDING),
        ({"active": 1, "ready": 0}, JobPhase.PENDING),
        ({"active": 1, "ready": 1}, JobPhase.RUNNING),
        ({"active": 1}, JobPhase.RUNNING),
        (
            {"active": 1, "conditions": [{"type": "FailureTarget", "status": "True"}]},
            JobPhase.RUNNING,
        ),
        (
            {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
            JobPhase.SUCCEEDED,
        ),
        (
            {
                "failed": 3,
                "conditions": [
                    {"type": "Complete", "status": "False"},
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"},
                ],
            },
            JobPhase.FAILED,
        ),
    ],
)
def test_job_state(status: dict[str, Any], phase: JobPhase) -> None:
    state = job_state(_job(status))
    assert state.phase is phase
    assert state.finished == (phase in {JobPhase.SUCCEEDED, JobPhase.FAILED})


def test_failed_state_keeps_the_reason() -> None:
    state = job_state(
        _job(
            {
                "failed": 3,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    }
                ],
            }
        )
    )
    assert state == JobState(
        "loraplex-train-j",
        JobPhase.FAILED,
        failed_pods=3,
        reason="BackoffLimitExceeded",
        message="Job has reached the specified backoff limit",
    )


# -- the runner, on a fake API ------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class FakeBatch:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        self.deleted: list[tuple[str, str]] = []

    def create_namespaced_job(self, namespace: str, body: Any) -> Any:
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiError(409)
        self.jobs[name] = body
        return body

    def read_namespaced_job(self, name: str, namespace: str) -> Any:
        if name not in self.jobs:
            raise ApiError(404)
        job = dict(self.jobs[name])
        queue = self.statuses.get(name, [])
        job["status"] = queue.pop(0) if len(queue) > 1 else (queue[0] if queue else {})
        return job

    def delete_namespaced_job(self, name: str, namespace: str, *, propagation_policy: str) -> Any:
        if name not in self.jobs:
            raise ApiError(404)
        del self.jobs[name]
        self.deleted.append((name, propagation_policy))


class FakeCore:
    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.logs: dict[str, str] = {}
        self.selectors: list[str] = []

    def list_namespaced_pod(self, namespace: str, *, label_selector: str) -> Any:
        self.selectors.append(label_selector)
        key, _, value = label_selector.partition("=")
        return {"items": [p for p in self.pods if p["metadata"]["labels"].get(key) == value]}

    def read_namespaced_pod_log(self, name: str, namespace: str, *, tail_lines: int) -> Any:
        return "\n".join(self.logs[name].splitlines()[-tail_lines:])

    def list_namespaced_event(self, namespace: str, *, field_selector: str) -> Any:
        return {"items": self.events.get(field_selector.split("=", 1)[1], [])}


@pytest.fixture
def api() -> tuple[FakeBatch, FakeCore]:
    return FakeBatch(), FakeCore()


def runner(
    api: tuple[FakeBatch, FakeCore], sleeps: list[float] | None = None
) -> KubernetesJobRunner:
    batch, core = api
    clock = iter(range(10_000))
    return KubernetesJobRunner(
        gpu_settings(poll_interval_s=7),
        batch,
        core,
        namespace="loraplex",
        sleep=(sleeps.append if sleeps is not None else lambda _s: None),
        clock=lambda: float(next(clock)),
    )


def test_submit_creates_the_job(api: tuple[FakeBatch, FakeCore]) -> None:
    name = runner(api).submit("ftjob-1", worker_id="worker-7")
    assert name == "loraplex-train-ftjob-1"
    created = container(api[0].jobs[name])
    assert created["args"][-1] == "ftjob-1"
    assert {"name": "LORAPLEX_WORKER_ID", "value": "worker-7"} in created["env"]


def test_submit_sizes_a_multi_process_job(api: tuple[FakeBatch, FakeCore]) -> None:
    name = runner(api).submit("ftjob-2", worker_id="worker-7", processes=3)
    cpu = container(api[0].jobs[name])["resources"]["requests"]["cpu"]
    assert float(cpu) >= 3, "one core per rank at least"


def test_submit_adopts_the_job_of_a_previous_worker(api: tuple[FakeBatch, FakeCore]) -> None:
    first = runner(api).submit("ftjob-1")
    assert runner(api).submit("ftjob-1") == first
    assert len(api[0].jobs) == 1


def test_submit_refuses_a_job_of_another_training_job(api: tuple[FakeBatch, FakeCore]) -> None:
    name = runner(api).submit("ftjob-1")
    api[0].jobs[name]["metadata"]["annotations"][k8s_jobs.JOB_ID_ANNOTATION] = "ftjob-other"
    with pytest.raises(ConflictError, match="ftjob-other"):
        runner(api).submit("ftjob-1")


def test_submit_passes_other_api_errors_on(api: tuple[FakeBatch, FakeCore]) -> None:
    def forbidden(namespace: str, body: Any) -> Any:
        raise ApiError(403)

    api[0].create_namespaced_job = forbidden  # type: ignore[method-assign]
    with pytest.raises(ApiError):
        runner(api).submit("ftjob-1")


def test_follow_reports_each_change_until_the_end(api: tuple[FakeBatch, FakeCore]) -> None:
    sleeps: list[float] = []
    r = runner(api, sleeps)
    name = r.submit("ftjob-1")
    api[0].statuses[name] = [
        {"active": 1, "ready": 0},
        {"active": 1, "ready": 0},
        {"active": 1, "ready": 1},
        {"active": 1, "ready": 1},
        {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    ]
    seen: list[JobPhase] = []
    final = r.follow(name, on_change=lambda s: seen.append(s.phase))
    assert final.phase is JobPhase.SUCCEEDED
    assert seen == [JobPhase.PENDING, JobPhase.RUNNING, JobPhase.SUCCEEDED]
    assert sleeps == [7, 7, 7, 7]


def test_follow_gives_up_at_the_timeout(api: tuple[FakeBatch, FakeCore]) -> None:
    r = runner(api)
    name = r.submit("ftjob-1")
    api[0].statuses[name] = [{"active": 1, "ready": 1}]
    state = r.follow(name, timeout_s=5)
    assert state.phase is JobPhase.RUNNING and not state.finished


def test_a_vanished_job_counts_as_failed(api: tuple[FakeBatch, FakeCore]) -> None:
    state = runner(api).follow("loraplex-train-gone")
    assert state.phase is JobPhase.FAILED and state.reason == "NotFound"
    assert "ttlSecondsAfterFinished" in state.message


def test_diagnose_names_dead_containers_and_warnings(api: tuple[FakeBatch, FakeCore]) -> None:
    r = runner(api)
    name = r.submit("ftjob-1")
    api[1].pods = [
        {
            "metadata": {"name": f"{name}-abcde", "labels": {k8s_jobs.POD_JOB_LABEL: name}},
            "status": {
                "containerStatuses": [
                    {"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
                ]
            },
        }
    ]
    api[1].events = {
        f"{name}-abcde": [
            {
                "type": "Warning",
                "reason": "FailedScheduling",
                "message": "0/3 nodes: Insufficient nvidia.com/gpu",
            },
            {"type": "Normal", "reason": "Pulled", "message": "image pulled"},
        ]
    }
    lines = r.diagnose(name)
    assert lines == [
        f"pod {name}-abcde: OOMKilled (exit code 137)",
        f"{name}-abcde: FailedScheduling: 0/3 nodes: Insufficient nvidia.com/gpu",
    ]
    assert api[1].selectors == [f"batch.kubernetes.io/job-name={name}"]


def test_logs_come_from_the_newest_pod(api: tuple[FakeBatch, FakeCore]) -> None:
    r = runner(api)
    name = r.submit("ftjob-1")
    assert r.logs(name) == ""
    api[1].pods = [
        {
            "metadata": {
                "name": "old",
                "labels": {k8s_jobs.POD_JOB_LABEL: name},
                "creationTimestamp": "2026-01-01T00:00:00Z",
            }
        },
        {
            "metadata": {
                "name": "new",
                "labels": {k8s_jobs.POD_JOB_LABEL: name},
                "creationTimestamp": "2026-01-01T01:00:00Z",
            }
        },
    ]
    api[1].logs = {"old": "first try", "new": "a\nb\nc"}
    assert r.logs(name, tail_lines=2) == "b\nc"


def test_delete_removes_pods_too_and_tolerates_a_gone_job(api: tuple[FakeBatch, FakeCore]) -> None:
    r = runner(api)
    name = r.submit("ftjob-1")
    r.delete(name)
    r.delete(name)
    assert api[0].deleted == [(name, "Background")]


def test_the_official_client_is_wired(monkeypatch: pytest.MonkeyPatch) -> None:
    """in_cluster() builds the real BatchV1Api/CoreV1Api, and their model objects convert to the
    dict form job_state reads."""
    kubernetes = pytest.importorskip("kubernetes")
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda: None)
    r = KubernetesJobRunner.in_cluster(gpu_settings(namespace="loraplex"))
    assert isinstance(r.batch, kubernetes.client.BatchV1Api)
    assert isinstance(r.core, kubernetes.client.CoreV1Api)
    model = kubernetes.client.V1Job(
        metadata=kubernetes.client.V1ObjectMeta(name="loraplex-train-x"),
        status=kubernetes.client.V1JobStatus(
            failed=1,
            conditions=[
                kubernetes.client.V1JobCondition(
                    type="Failed", status="True", reason="DeadlineExceeded"
                )
            ],
        ),
    )
    state = job_state(r._to_dict(model))
    assert state.phase is JobPhase.FAILED and state.reason == "DeadlineExceeded"
    # The manifest is accepted by the client's own model deserializer.
    job = job_manifest("ftjob-1", gpu_settings(), namespace="loraplex")
    v1job = kubernetes.client.ApiClient().deserialize(json.dumps(job), "V1Job", "application/json")
    assert v1job.spec.template.spec.containers[0].args == ["train", "run-job", "ftjob-1"]
