"""The Kubernetes Job of one training job (generated, schema-validated, consistent with the gpu
overlay) and the runner that creates and follows it, against a fake API."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest

from services.trainer import k8s_jobs
from services.trainer.k8s_jobs import (
    KubernetesJobSettings,
    job_manifest,
    job_name,
    resolve_namespace,
)
from services.trainer.k8s_runner import JobPhase, JobState, KubernetesJobRunner, job_state
from shared.errors import ConfigError, ConflictError
from tests.deploy.manifests import (
    EXTERNAL_SECRETS,
    K8S_VERSIONS,
    check_env_settings,
    check_images,
    check_resources,
    check_security,
    named,
    rendered,
)

IMAGE = "ghcr.io/loraplex/loraplex:0.1.0-gpu"


def gpu_settings(**overrides: Any) -> KubernetesJobSettings:
    values: dict[str, Any] = {
        "image": IMAGE,
        "gpus": 1,
        "cpu": "8",
        "memory": "64Gi",
        "secrets": ["loraplex-database", "loraplex-s3"],
        "volume_claims": {"loraplex-data": "/var/lib/loraplex", "loraplex-models": "/models"},
        **overrides,
    }
    return KubernetesJobSettings(**values)


def container(job: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return c


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    ["ftjob-abc123", "FTJOB_ABC", "a" * 64, "job/../x", "___", "ftjob-" + "9" * 42, "x.y"],
)
def test_job_names_are_dns_labels(job_id: str) -> None:
    name = job_name(job_id)
    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    assert name.startswith(k8s_jobs.JOB_NAME_PREFIX)
    assert job_name(job_id) == name, "deterministic: a restarted worker finds the same Job"


def test_distinct_ids_never_share_a_job() -> None:
    ids = ["ftjob-1", "FTJOB-1", "ftjob_1", "ftjob.1", "a" * 64, "a" * 65, "a" * 63 + "b"]
    names = [job_name(i) for i in ids]
    assert len(set(names)) == len(ids), names
    assert job_name("ftjob-abc") == "loraplex-train-ftjob-abc", "readable when already valid"


def test_empty_id_is_refused() -> None:
    with pytest.raises(ConfigError):
        job_name("")


# -- the manifest -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(KubernetesJobSettings(image="ghcr.io/loraplex/loraplex:0.1.0-cpu"), id="cpu"),
        pytest.param(gpu_settings(active_deadline_seconds=86400), id="one-gpu"),
    ],
)
def test_job_validates_against_the_kubernetes_schema(
    settings: KubernetesJobSettings, version: str
) -> None:
    job = job_manifest("ftjob-abc123", settings, namespace="loraplex")
    kubernetes_validate.validate(job, version, strict=True)


def test_job_runs_the_training_job_in_the_same_image() -> None:
    job = job_manifest("ftjob-abc123", gpu_settings(), namespace="loraplex")
    c = container(job)
    assert c["image"] == IMAGE
    assert c["args"] == ["train", "run-job", "ftjob-abc123"]
    assert "command" not in c, "the image's entrypoint (tini, loraplex) stays"
    assert job["metadata"]["annotations"][k8s_jobs.JOB_ID_ANNOTATION] == "ftjob-abc123"
    assert job["metadata"]["namespace"] == "loraplex"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["ttlSecondsAfterFinished"] == 86400
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels == job["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "loraplex"
    assert labels[k8s_jobs.JOB_ID_LABEL] == "ftjob-abc123"


def test_job_gets_the_workers_configuration_and_never_nests() -> None:
    job = job_manifest("ftjob-1", gpu_settings(), namespace="loraplex")
    c = container(job)
    assert c["envFrom"] == [
        {"configMapRef": {"name": "loraplex-config"}},
        {"configMapRef": {"name": "loraplex-trainer"}},
        {"secretRef": {"name": "loraplex-database"}},
        {"secretRef": {"name": "loraplex-s3"}},
    ]
    # env overrides envFrom: the Job trains in place even though its ConfigMap enables Jobs.
    assert c["env"] == [{"name": "LORAPLEX_K8S_ENABLED", "value": "false"}]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_job_works_as_the_claiming_worker() -> None:
    job = job_manifest("ftjob-1", gpu_settings(), namespace="ns", worker_id="worker-7")
    assert {"name": "LORAPLEX_WORKER_ID", "value": "worker-7"} in container(job)["env"]
    # run-job reads it straight from the environment (services/trainer/worker.py).
    worker_source = Path(k8s_jobs.__file__).with_name("worker.py")
    if worker_source.exists():
        assert '"LORAPLEX_WORKER_ID"' in worker_source.read_text()


def test_gpu_resources_are_optional() -> None:
    cpu = job_manifest("j", KubernetesJobSettings(image=IMAGE), namespace="ns")
    assert "nvidia.com/gpu" not in str(cpu)
    assert "tolerations" not in cpu["spec"]["template"]["spec"]
    gpu = job_manifest("j", gpu_settings(gpus=2), namespace="ns")
    resources = container(gpu)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "64Gi"
    assert gpu["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_shared_data_claim_replaces_the_scratch_directory() -> None:
    shared = job_manifest("j", gpu_settings(), namespace="ns")
    mounts = {m["mountPath"]: m["name"] for m in container(shared)["volumeMounts"]}
    volumes = {v["name"]: v for v in shared["spec"]["template"]["spec"]["volumes"]}
    data = volumes[mounts["/var/lib/loraplex"]]
    assert data["persistentVolumeClaim"]["claimName"] == "loraplex-data"
    assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == "loraplex-models"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    scratch = job_manifest("j", KubernetesJobSettings(image=IMAGE), namespace="ns")
    volumes = {v["name"]: v for v in scratch["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_job_meets_the_deployment_invariants() -> None:
    job = job_manifest("ftjob-1", gpu_settings(), namespace="loraplex")
    assert check_resources([job]) == []
    assert check_images([job]) == []
    assert check_security([job]) == []


def test_job_environment_is_real_trainer_settings() -> None:
    from services.trainer.config import TrainerSettings

    allowed = {f"LORAPLEX_{f.upper()}" for f in TrainerSettings.model_fields}
    allowed |= {f"LORAPLEX_K8S_{f.upper()}" for f in KubernetesJobSettings.model_fields}
    # Read from os.environ by run-job, not a settings field (see the test above).
    allowed.add("LORAPLEX_WORKER_ID")
    job = job_manifest("ftjob-1", gpu_settings(), namespace="loraplex", worker_id="w")
    assert check_env_settings([job], {"trainer": frozenset(allowed)}) == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="LORAPLEX_K8S_IMAGE"):
        job_manifest("j", KubernetesJobSettings(), namespace="ns")
    with pytest.raises(ConfigError, match="namespace"):
        job_manifest("j", KubernetesJobSettings(image=IMAGE), namespace="Bad_NS")
    for bad in (
        {"memory": "lots"},
        {"cpu": "2 cores"},
        {"gpus": -1},
        {"volume_claims": {"data": "relative/path"}},
        {"volume_claims": {"a": "/x", "b": "/x"}},
        {"secrets": ["Not_A_Name"]},
    ):
        with pytest.raises(pydantic.ValidationError):
            KubernetesJobSettings(image=IMAGE, **bad)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLEX_K8S_ENABLED", "true")
    monkeypatch.setenv("LORAPLEX_K8S_SECRETS", '["loraplex-database", "loraplex-s3"]')
    monkeypatch.setenv("LORAPLEX_K8S_VOLUME_CLAIMS", '{"loraplex-data": "/var/lib/loraplex"}')
    monkeypatch.setenv("LORAPLEX_K8S_GPUS", "1")
    settings = KubernetesJobSettings()
    assert settings.enabled and settings.gpus == 1
    assert settings.secrets == ["loraplex-database", "loraplex-s3"]
    assert settings.volume_claims == {"loraplex-data": "/var/lib/loraplex"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl missing")
def test_gpu_overlay_configures_a_job_that_fits_the_overlay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gpu overlay's trainer ConfigMap, read as the worker reads it, yields a Job whose
    ConfigMaps, Secrets and claims exist in that overlay (or are created by the operator) and
    whose data directory is the shared one."""
    docs = rendered("gpu")
    config_maps = named(docs, "ConfigMap")
    for key, value in config_maps["loraplex-trainer"]["data"].items():
        monkeypatch.setenv(key, value)
    settings = KubernetesJobSettings()
    assert settings.enabled
    data_dir = config_maps["loraplex-config"]["data"]["LORAPLEX_DATA_DIR"]
    namespace = config_maps["loraplex-config"]["metadata"]["namespace"]
    job = job_manifest("ftjob-1", settings, namespace=namespace, data_dir=data_dir)
    kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)
    assert set(settings.config_maps) <= set(config_maps)
    assert set(settings.secrets) <= set(named(docs, "Secret")) | EXTERNAL_SECRETS
    assert set(settings.volume_claims) <= set(named(docs, "PersistentVolumeClaim"))
    assert settings.volume_claims.get("loraplex-data") == data_dir
    assert settings.service_account in named(docs, "ServiceAccount")
    worker = named(docs, "Deployment")["loraplex-trainer-worker"]
    worker_image = worker["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container(job)["image"] == worker_image


def test_namespace_comes_from_settings_or_the_pod(tmp_path: Path) -> None:
    assert resolve_namespace(KubernetesJobSettings(namespace="set")) == "set"
    sa_file = tmp_path / "namespace"
    sa_file.write_text("loraplex\n")
    assert resolve_namespace(KubernetesJobSettings(), sa_file) == "loraplex"
    with pytest.raises(ConfigError, match="LORAPLEX_K8S_NAMESPACE"):
        resolve_namespace(KubernetesJobSettings(), tmp_path / "missing")


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
