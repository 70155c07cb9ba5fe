"""The engine manifests of a full fine-tune: names, vLLM arguments, the fetch step, the CLI.
(Schema and cluster invariants: tests/deploy/test_full_engine.py.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from services.server.config import ServerSettings
from services.server.full_manifests import (
    ENGINE_COMMAND,
    MODEL_PATH,
    engine_args,
    engine_name,
    full_engine_manifests,
    full_engine_url,
)
from shared.errors import ValidationError

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = docs[0]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("version", ["m@v1", "a_b@v1", "a-b@v1", "x" * 63 + "@v12", "9.z@v3"])
def test_engine_name_is_a_dns_label(version: str) -> None:
    name = engine_name(version)
    assert DNS_LABEL.match(name) and len(name) <= 63, name


def test_engine_names_differ_where_ids_differ() -> None:
    ids = ["a_b@v1", "a-b@v1", "a.b@v1", "a-b@v2"]
    assert len({engine_name(v) for v in ids}) == len(ids)


@pytest.mark.parametrize("bad", ["m", "m@1", "M@v1", "m@v0", "../m@v1", ""])
def test_a_bad_version_id_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        engine_name(bad)
    assert info.value.param == "version"


def test_engine_serves_the_fetched_folder_under_the_version_id() -> None:
    settings = ServerSettings(max_model_len=1024, max_num_seqs=16)
    cpu = engine_args("m@v2", settings, gpus=0)
    assert cpu[cpu.index("--model") + 1] == MODEL_PATH
    assert cpu[cpu.index("--served-model-name") + 1] == "m@v2"
    assert cpu[cpu.index("--max-model-len") + 1] == "1024"
    assert "--enable-lora" not in cpu and "--enforce-eager" in cpu
    gpu = engine_args("m@v2", ServerSettings(gpu_memory_utilization=0.5), gpus=1)
    assert "--enforce-eager" not in gpu
    assert gpu[gpu.index("--gpu-memory-utilization") + 1] == "0.5"


def test_manifests_fetch_then_serve() -> None:
    settings = ServerSettings(full_kv_cache_gib=3)
    docs = full_engine_manifests(
        "m@v2",
        settings,
        image="img:1.0",
        namespace="ns",
        secrets=["loraplex-database", "loraplex-s3"],
        volume_claims={"loraplex-artifacts": "/artifacts"},
        gpus=1,
    )
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "PodDisruptionBudget"]
    assert {d["metadata"]["name"] for d in docs} == {engine_name("m@v2")}
    assert {d["metadata"]["namespace"] for d in docs} == {"ns"}
    pod = _pod(docs)
    fetch, engine = pod["initContainers"][0], pod["containers"][0]
    assert fetch["args"][:4] == ["adapters", "export", "m@v2", "--merged"]
    assert {s["secretRef"]["name"] for s in fetch["envFrom"] if "secretRef" in s} == {
        "loraplex-database",
        "loraplex-s3",
    }
    assert {"name": "claim-0", "mountPath": "/artifacts"} in fetch["volumeMounts"]
    assert engine["command"] == ENGINE_COMMAND and "envFrom" not in engine
    env = {e["name"]: e["value"] for e in engine["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "1"
    model = next(m for m in engine["volumeMounts"] if m["name"] == "model")
    assert model["readOnly"] is True and MODEL_PATH.startswith(model["mountPath"] + "/")


@pytest.mark.parametrize(("field", "value"), [("cpu", "two"), ("memory", "8 GB")])
def test_a_bad_quantity_is_refused(field: str, value: str) -> None:
    options: dict[str, Any] = {field: value}
    with pytest.raises(ValidationError) as info:
        full_engine_manifests("m@v1", ServerSettings(), image="i:1", **options)
    assert info.value.param == field


def test_cli_prints_the_manifests_and_the_url_entry() -> None:
    from services.cli import app

    runner = CliRunner()
    args = ["adapters", "engine-manifest", "m@v1", "--image", "img:1.0"]
    done = runner.invoke(app, [*args, "--claim", "loraplex-artifacts=/artifacts"])
    assert done.exit_code == 0, done.output
    docs = list(yaml.safe_load_all(done.stdout))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "PodDisruptionBudget"]
    entry = done.stderr.split("LORAPLEX_FULL_ENGINE_URLS entry: ", 1)[1]
    assert json.loads(entry) == {"m@v1": full_engine_url("m@v1")}
    bad = runner.invoke(app, [*args, "--claim", "no-path"])
    assert bad.exit_code == 2 and "CLAIM=/PATH" in bad.stderr
    assert runner.invoke(app, ["adapters", "engine-manifest", "M", "--image", "i:1"]).exit_code == 2
