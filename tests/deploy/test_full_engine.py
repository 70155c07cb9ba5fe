"""A full fine-tune's engine Deployment (``loraplex adapters engine-manifest``), applied beside an
overlay: it validates against the Kubernetes schemas, keeps every invariant the overlays keep
(non-root, resources, probes, pinned image, no key, reachable from the server pods only), and
each check fails on a broken copy."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import typer.main

from services.cli import app as cli_app
from services.server.config import ServerSettings
from services.server.full_manifests import full_engine_manifests, full_engine_url
from tests.deploy.manifests import (
    ENGINE,
    K8S_VERSIONS,
    OVERLAY_EXTERNAL_SECRETS,
    OVERLAYS,
    check_engines,
    check_env_settings,
    containers,
    invariant_problems,
    named,
    pod_spec,
    rendered,
    service_of,
)
from tests.deploy.test_manifests import settings_env_names

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed"
)

VERSION = "support-full@v2"
OVERLAY_PARAMS = [pytest.param(o, id=f"overlays/{o}") for o in OVERLAYS]


def _image(docs: list[dict[str, Any]]) -> str:
    spec = pod_spec(named(docs, "Deployment")["loraplex-server"])
    assert spec is not None
    return str(spec["containers"][0]["image"])


def generated(overlay: str) -> list[dict[str, Any]]:
    """The engine objects as the overlay's operator generates them (docs/deploy.md): the
    overlay's namespace and image, and the artifact store it uses."""
    docs = rendered(overlay)
    namespace = named(docs, "ConfigMap")["loraplex-config"]["metadata"]["namespace"]
    options: dict[str, Any] = (
        {"volume_claims": {"loraplex-artifacts": "/artifacts"}}
        if overlay == "cpu-dev"
        else {"secrets": ["loraplex-database", "loraplex-s3"], "gpus": 1, "memory": "48Gi"}
    )
    return full_engine_manifests(
        VERSION,
        ServerSettings(max_model_len=2048),
        image=_image(docs),
        namespace=namespace,
        **options,
    )


def _together(overlay: str) -> list[dict[str, Any]]:
    return rendered(overlay) + generated(overlay)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_validates_against_kubernetes_schema(overlay: str, version: str) -> None:
    for doc in generated(overlay):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_keeps_the_invariants_beside_the_overlay(overlay: str) -> None:
    docs = _together(overlay)
    engines = [c for _, c, init in containers(docs) if not init and service_of(c) == ENGINE]
    assert len(engines) == 1, "the engine container is not recognised as one"
    assert invariant_problems(docs, OVERLAY_EXTERNAL_SECRETS[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_fetch_step_gets_only_server_settings(overlay: str) -> None:
    docs = _together(overlay)
    fetch = [c for d, c, init in containers(docs) if init and d in generated_only(docs)]
    assert [service_of(c) for c in fetch] == ["server"]
    assert check_env_settings(docs, {"server": settings_env_names("server")}) == []


def generated_only(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"]["name"].startswith("loraplex-full-")]


def test_fetch_step_runs_a_real_export_command() -> None:
    fetch = pod_spec(generated("cpu-dev")[0])
    assert fetch is not None
    args = fetch["initContainers"][0]["args"]
    node: Any = typer.main.get_command(cli_app)
    for word in args[:2]:
        node = node.commands[word]
    options = {o for p in node.params for o in getattr(p, "opts", [])}
    used = {a for a in args if a.startswith("--")}
    assert used <= options, used - options
    assert args[2] == VERSION


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_server_url_names_the_engine_service(overlay: str) -> None:
    """The URL the server is given resolves to the generated Service, on a port it serves, and
    set in the server's ConfigMap (the operator's patch, docs/deploy.md) it is a server
    setting that loads."""
    url = urlsplit(full_engine_url(VERSION))
    service = named(generated(overlay), "Service")[str(url.hostname)]
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    docs = _together(overlay)
    data = named(docs, "ConfigMap")["loraplex-server"]["data"]
    data["LORAPLEX_FULL_ENGINE_URLS"] = json.dumps({VERSION: full_engine_url(VERSION)})
    assert check_env_settings(docs, {"server": settings_env_names("server")}) == []
    settings = ServerSettings.model_validate_json(
        json.dumps({"full_engine_urls": json.loads(data["LORAPLEX_FULL_ENGINE_URLS"])})
    )
    assert settings.full_engine_urls == {VERSION: f"http://{service['metadata']['name']}:8000"}


# -- each check fails on a broken copy -------------------------------------------------------


def _engine(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = pod_spec(generated_only(docs)[0])
    assert spec is not None
    container: dict[str, Any] = spec["containers"][0]
    return container


def _set_arg(flag: str, value: str) -> Callable[[list[dict[str, Any]]], None]:
    def edit(docs: list[dict[str, Any]]) -> None:
        args = _engine(docs)["args"]
        args[args.index(flag) + 1] = value

    return edit


def _open_engines_to_all(docs: list[dict[str, Any]]) -> None:
    peer = named(docs, "NetworkPolicy")["loraplex-engines"]["spec"]["ingress"][0]["from"][0]
    del peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]


def _relabel(docs: list[dict[str, Any]]) -> None:
    for doc in generated_only(docs):
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = "full"
            doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "full"


def _secret_env(docs: list[dict[str, Any]]) -> None:
    _engine(docs)["envFrom"] = [{"secretRef": {"name": "loraplex-database"}}]


def _key_file(docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(generated_only(docs)[0])
    assert spec is not None
    spec["volumes"].append({"name": "keys", "secret": {"secretName": "loraplex-keys"}})
    _engine(docs)["volumeMounts"].append(
        {"name": "keys", "mountPath": "/etc/loraplex/keys", "readOnly": True}
    )


def _no_tini(docs: list[dict[str, Any]]) -> None:
    _engine(docs)["command"] = _engine(docs)["command"][2:]


def _drop(key: str) -> Callable[[list[dict[str, Any]]], None]:
    def edit(docs: list[dict[str, Any]]) -> None:
        del _engine(docs)[key]

    return edit


def _no_memory_limit(docs: list[dict[str, Any]]) -> None:
    del _engine(docs)["resources"]["limits"]["memory"]


def _root(docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(generated_only(docs)[0])
    assert spec is not None
    spec["securityContext"]["runAsNonRoot"] = False


def _no_pdb(docs: list[dict[str, Any]]) -> None:
    docs[:] = [d for d in docs if not (d in generated_only(docs) and d["kind"] != "Deployment")]


MUTATIONS = [
    ("readiness-removed", _drop("readinessProbe"), "no readinessProbe"),
    ("wrong-port", _set_arg("--port", "8001"), "--port 8001 is not its containerPort"),
    ("loopback", _set_arg("--host", "127.0.0.1"), "--host is 127.0.0.1"),
    ("lora", lambda d: _engine(d)["args"].append("--enable-lora"), "--enable-lora"),
    ("open-to-all", _open_engines_to_all, "another loraplex pod reaches every port"),
    ("not-an-engine", _relabel, "loraplex-engines misses them"),
    ("secret-env", _secret_env, "gets LORAPLEX_DATABASE_URL from Secret/loraplex-database"),
    ("key-file", _key_file, "listens on nothing yet gets the key file"),
    ("entrypoint-replaced", _no_tini, "sets command, replacing the image's entrypoint"),
    ("no-memory-limit", _no_memory_limit, "no memory limit"),
    ("root", _root, "pod does not set runAsNonRoot"),
    ("no-service-or-pdb", _no_pdb, "no PodDisruptionBudget selects it"),
]


@pytest.mark.parametrize(("edit", "what"), [pytest.param(e, w, id=n) for n, e, w in MUTATIONS])
def test_checks_fail_on_a_broken_engine(
    edit: Callable[[list[dict[str, Any]]], None], what: str
) -> None:
    docs = copy.deepcopy(_together("cpu-dev"))
    edit(docs)
    problems = invariant_problems(docs, OVERLAY_EXTERNAL_SECRETS["cpu-dev"])
    assert any(what in p for p in problems), problems


def test_engine_check_passes_the_shipped_engine() -> None:
    # The control of the mutations above: the same copy, unbroken, has no engine problem.
    assert check_engines(copy.deepcopy(_together("cpu-dev"))) == []
