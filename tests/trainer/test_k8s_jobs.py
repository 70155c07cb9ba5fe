"""The Kubernetes Job of one training job: generated, schema-validated and consistent with the
gpu overlay (the runner that creates and follows it is tested in test_k8s_runner.py)."""

from __future__ import annotations

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
from shared.errors import ConfigError
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


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_a_multi_process_gpu_job_gets_one_gpu_per_process(version: str) -> None:
    """``processes: 4`` on the gpu overlay: the pod's ``run-job`` starts ``torchrun
    --nproc-per-node=4`` (services/trainer/launch.py), so the Job asks for four GPUs."""
    from services.trainer.launch import rank_command

    job = job_manifest("ftjob-ddp", gpu_settings(gpus=1), namespace="ns", processes=4)
    kubernetes_validate.validate(job, version, strict=True)
    resources = container(job)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "4"
    assert container(job)["args"] == ["train", "run-job", "ftjob-ddp"]
    gpus = int(resources["limits"]["nvidia.com/gpu"])
    assert f"--nproc-per-node={gpus}" in rank_command("ftjob-ddp", gpus)
    one = job_manifest("ftjob-ddp", gpu_settings(gpus=2), namespace="ns")
    assert container(one)["resources"]["limits"]["nvidia.com/gpu"] == "2", "one process: as set"


def test_a_multi_process_cpu_job_gets_a_core_per_process() -> None:
    cpu = KubernetesJobSettings(image=IMAGE, cpu="500m")
    job = job_manifest("j", cpu, namespace="ns", processes=3)
    assert container(job)["resources"]["requests"]["cpu"] == "3"
    assert "nvidia.com/gpu" not in str(job)
    roomy = job_manifest(
        "j", KubernetesJobSettings(image=IMAGE, cpu="8"), namespace="ns", processes=3
    )
    assert container(roomy)["resources"]["requests"]["cpu"] == "8"
    with pytest.raises(ConfigError) as caught:
        job_manifest("j", cpu, namespace="ns", processes=0)
    assert caught.value.param == "processes"


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
    # A job with processes: 2 on this overlay: one GPU per rank, still a valid Job.
    ddp = job_manifest("ftjob-2", settings, namespace=namespace, data_dir=data_dir, processes=2)
    kubernetes_validate.validate(ddp, K8S_VERSIONS[-1], strict=True)
    assert container(ddp)["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_namespace_comes_from_settings_or_the_pod(tmp_path: Path) -> None:
    assert resolve_namespace(KubernetesJobSettings(namespace="set")) == "set"
    sa_file = tmp_path / "namespace"
    sa_file.write_text("loraplex\n")
    assert resolve_namespace(KubernetesJobSettings(), sa_file) == "loraplex"
    with pytest.raises(ConfigError, match="LORAPLEX_K8S_NAMESPACE"):
        resolve_namespace(KubernetesJobSettings(), tmp_path / "missing")
