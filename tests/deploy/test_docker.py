"""The Dockerfiles, checked statically (no Docker engine here): pinned bases, a non-root user,
one `loraplex` entrypoint, ports and paths that match the manifests, installs that match
pyproject.toml."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from services.trainer import k8s_jobs
from shared.settings import SharedSettings
from tests.deploy.manifests import (
    DEPLOY,
    OVERLAYS,
    REPO,
    SERVICE_PORTS,
    containers,
    image_problem,
    is_loraplex,
    pod_spec,
    rendered,
)

DOCKERFILES = {
    "cpu": DEPLOY / "docker" / "Dockerfile.cpu",
    "gpu": DEPLOY / "docker" / "Dockerfile.gpu",
}
FLAVOURS = [pytest.param(f, id=f"Dockerfile.{f}") for f in DOCKERFILES]
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl missing")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def args_of(path: Path, word: str) -> list[str]:
    return [rest for w, rest in instructions(path) if w == word]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (w, _) in enumerate(steps) if w == "FROM")
    return steps[last_from:]


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in steps:
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_base_images_are_pinned(flavour: str) -> None:
    stages: set[str] = set()
    for rest in args_of(DOCKERFILES[flavour], "FROM"):
        parts = rest.split()
        image = parts[0]
        if image not in stages:
            assert image_problem(image) is None, image_problem(image)
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_runs_as_the_non_root_user_the_manifests_expect(flavour: str) -> None:
    steps = final_stage(DOCKERFILES[flavour])
    users = [rest for word, rest in steps if word == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid"
    assert int(uid) == k8s_jobs.IMAGE_UID and gid == uid
    assert env_of(steps)["HOME"] == k8s_jobs.IMAGE_HOME


@needs_kubectl
@pytest.mark.parametrize("overlay", [pytest.param(o, id=f"overlays/{o}") for o in OVERLAYS])
def test_manifests_run_pods_as_the_image_user(overlay: str) -> None:
    for doc in rendered(overlay):
        spec = pod_spec(doc)
        if spec is None or not any(is_loraplex(c) for c in spec["containers"]):
            continue
        assert spec["securityContext"]["runAsUser"] == k8s_jobs.IMAGE_UID, doc["metadata"]["name"]
        for c in spec["containers"] + spec.get("initContainers", []):
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            # Root filesystem is read-only: HOME and /tmp must be writable volumes.
            assert {k8s_jobs.IMAGE_HOME, "/tmp"} <= mounts, f"{doc['metadata']['name']}/{c['name']}"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_one_loraplex_entrypoint(flavour: str) -> None:
    steps = final_stage(DOCKERFILES[flavour])
    entry = [json.loads(rest) for word, rest in steps if word == "ENTRYPOINT"]
    assert len(entry) == 1, "exactly one ENTRYPOINT, in exec (JSON) form"
    assert entry[0][0] == "/usr/bin/tini" and entry[0][-1] == "loraplex", entry[0]
    assert "tini" in " ".join(args_of(DOCKERFILES[flavour], "RUN")), "tini is not installed"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_exposed_ports_are_the_service_ports(flavour: str) -> None:
    exposed = {int(p) for rest in args_of(DOCKERFILES[flavour], "EXPOSE") for p in rest.split()}
    assert exposed == set(SERVICE_PORTS.values())


@needs_kubectl
def test_manifest_ports_are_exposed_by_the_images() -> None:
    exposed = {int(p) for rest in args_of(DOCKERFILES["cpu"], "EXPOSE") for p in rest.split()}
    for overlay in OVERLAYS:
        for _doc, c, _init in containers(rendered(overlay)):
            if is_loraplex(c):
                assert {p["containerPort"] for p in c.get("ports", [])} <= exposed


@needs_kubectl
@pytest.mark.parametrize("overlay", [pytest.param(o, id=f"overlays/{o}") for o in OVERLAYS])
def test_overlay_uses_its_image_flavour(overlay: str) -> None:
    flavour = "gpu" if overlay == "gpu" else "cpu"
    for _doc, c, _init in containers(rendered(overlay)):
        if is_loraplex(c):
            assert c["image"].endswith(f"-{flavour}"), c["image"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_copied_files_exist_and_reach_the_build_context(flavour: str) -> None:
    path = DOCKERFILES[flavour]
    ignore = Path(f"{path}.dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    for rest in args_of(path, "COPY"):
        if rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            assert (REPO / source).exists(), f"{path.name}: COPY {source}: no such file"
            included = False
            for rule in rules:
                negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
                if fnmatch.fnmatch(source.rstrip("/"), pattern) or pattern == "**":
                    included = negated
            assert included, f"{path.name}: COPY {source} is excluded by its .dockerignore"


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_installs_the_project_with_its_extras(flavour: str) -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    extras_defined = set(project["optional-dependencies"])
    runs = " ".join(args_of(DOCKERFILES[flavour], "RUN"))
    installs = re.findall(r'pip install[^"]*"\.\[([a-z0-9,]+)\]"', runs)
    assert installs, "the project itself is not pip-installed"
    extras = set(installs[0].split(","))
    assert extras <= extras_defined, extras - extras_defined
    # The engine flavour, the S3 artifact store, and the Kubernetes Job executor.
    assert {flavour, "s3", "k8s"} <= extras


def test_cpu_image_installs_torch_like_the_dev_machines() -> None:
    runs = args_of(DOCKERFILES["cpu"], "RUN")
    torch_pin = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch=="))  # type: ignore[index]
    first_install = next(r for r in runs if "pip install" in r)
    assert torch_pin in first_install and "--index-url" in first_install, "CPU torch first, pinned"
    install = next(r for r in runs if '".[' in r)
    assert "-c requirements/lock-cpu.txt" in install
    assert all(p in install for p in ("torchvision", "torchaudio", "torchcodec")), "uninstall"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_image_environment_names_real_settings(flavour: str) -> None:
    env = env_of(final_stage(DOCKERFILES[flavour]))
    fields = {f"LORAPLEX_{name.upper()}" for name in SharedSettings.model_fields}
    assert {k for k in env if k.startswith("LORAPLEX_")} <= fields
    data_dir = env["LORAPLEX_DATA_DIR"]
    runs = " ".join(args_of(DOCKERFILES[flavour], "RUN"))
    assert re.search(rf"install -d -o 10001 -g 10001 {re.escape(data_dir)}\b", runs)
