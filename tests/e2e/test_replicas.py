"""Two server replicas on one PostgreSQL registry converge on the same alias by themselves.

Each replica is a real ``loraplex serve`` process with its own data directory and its own vLLM
engine; they share nothing but the registry (PostgreSQL) and the artifact store (one local
directory). The alias is moved with a compare-and-set write straight to the registry, as another
replica's admin API or the evaluator would, and both replicas must answer with the new version
within the deadline without being told.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from services.localstack import LocalStack
from services.server.config import ServerSettings
from services.server.importer import base_identity, import_adapter
from services.server.proxy import VERSION_HEADER
from services.server.validation import AdapterValidator
from shared.artifacts import open_store
from shared.basemodel import ResolvedBaseModel
from shared.registry import adapters as reg
from shared.registry.db import open_registry
from tests.server.test_real_engine import build_peft_adapters

pytestmark = pytest.mark.slow

ADAPTER = "conv"
ALIAS = "prod"
RECONCILE_INTERVAL_S = 0.5
# Twenty reconcile intervals: room for reading the registry, fetching the artifact and loading it
# into the engine on a busy 2-core machine, still far below anything a person would call stale.
DEADLINE_S = 10.0


def _data_dir(root: Path, base_model: ResolvedBaseModel) -> Path:
    data = root / "data"
    models = data / "models" / base_model.path.name
    models.mkdir(parents=True)
    for item in base_model.path.iterdir():
        os.link(item, models / item.name)
    return data


def _answer(client: httpx.Client, replica: LocalStack) -> str | None:
    url = replica.server_url
    response = client.post(
        f"{url}/v1/completions",
        headers={"Authorization": f"Bearer {replica.app_key}"},
        json={"model": ADAPTER, "prompt": "Order:", "max_tokens": 1, "temperature": 0},
    )
    # A replica switching versions keeps serving: an error here is a failure, not a retry.
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text}"
    version: str | None = response.headers.get(VERSION_HEADER)
    return version


def _converge(replicas: list[LocalStack], version: str, since: float) -> list[float]:
    """Seconds from ``since`` until each replica first answered with ``version``."""
    seen: list[float | None] = [None] * len(replicas)
    with httpx.Client(timeout=60) as client:
        while any(s is None for s in seen):
            for i, replica in enumerate(replicas):
                if seen[i] is None and _answer(client, replica) == version:
                    seen[i] = time.monotonic() - since
            elapsed = time.monotonic() - since
            if elapsed > DEADLINE_S and any(s is None for s in seen):
                late = [r.server_url for r, s in zip(replicas, seen, strict=True) if s is None]
                raise AssertionError(
                    f"{late} did not answer {ADAPTER!r} with {version} within {DEADLINE_S} s"
                )
            time.sleep(0.05)
        # Converged means staying there: every replica still answers with the new version.
        for replica in replicas:
            assert _answer(client, replica) == version
    return [s for s in seen if s is not None]


def _move(settings: ServerSettings, version: str, expected: str) -> float:
    registry = open_registry(settings)
    try:
        with registry.session() as session:
            reg.set_alias(
                session, ADAPTER, ALIAS, version, expected=expected, actor="test-replicas"
            )
        return time.monotonic()  # the session has committed: the change is visible from here
    finally:
        registry.dispose()


def test_two_replicas_converge_on_alias_moves(
    tmp_path: Path, base_model: ResolvedBaseModel, pg_url: str
) -> None:
    shared_store = tmp_path / "artifacts"
    shared_store.mkdir()
    env = {
        "LORAPLEX_DATABASE_URL": pg_url,
        "LORAPLEX_ARTIFACT_URL": str(shared_store),
        "LORAPLEX_KV_CACHE_GIB": "1",
        "LORAPLEX_RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
    }
    replicas = [
        LocalStack(_data_dir(tmp_path / f"replica-{i}", base_model), extra_env=env)
        for i in range(2)
    ]

    # The versions go in the way a deployment's import does, seen from replica 0's settings; the
    # other replica learns about them only through the registry and the store.
    settings = ServerSettings(
        data_dir=replicas[0].data_dir, database_url=pg_url, artifact_url=str(shared_store)
    )
    registry = open_registry(settings)
    store = open_store(settings)
    base = base_identity(settings, registry)
    validator = AdapterValidator(store, base, settings.max_lora_rank)
    folders = build_peft_adapters(base.path, tmp_path, seeds=[1, 2])  # type: ignore[arg-type]
    v1, v2 = (import_adapter(registry, store, validator, f, ADAPTER)[0].id for f in folders)
    with registry.session() as session:
        reg.set_alias(session, ADAPTER, ALIAS, v1, expected=None)
    registry.dispose()

    try:
        for replica in replicas:  # one engine start at a time: the machine has 2 cores
            started = time.monotonic()
            replica.start(trainer=False, evaluator=False)
            print(f"{replica.server_url} ready in {time.monotonic() - started:.1f} s")
        assert _converge(replicas, v1, time.monotonic())

        forward = _converge(replicas, v2, _move(settings, v2, expected=v1))
        print(f"{v1} -> {v2}: replicas converged in {[f'{s:.2f} s' for s in forward]}")
        back = _converge(replicas, v1, _move(settings, v1, expected=v2))
        print(f"{v2} -> {v1}: replicas converged in {[f'{s:.2f} s' for s in back]}")

        registry = open_registry(settings)
        with registry.session() as session:
            history = reg.alias_history(session, ADAPTER, ALIAS)
            assert [(e.from_version, e.to_version) for e in history[:2]] == [(v2, v1), (v1, v2)]
        registry.dispose()
    except BaseException:
        for replica in replicas:
            if (server := replica.services.get("server")) is not None:
                print(f"--- {replica.server_url} log ---\n{server.tail(40)}")
        raise
    finally:
        for replica in replicas:
            replica.stop()
