"""What an adapter's lineage says it was trained on: the training files of a continued adapter's
whole chain, and the loss curve in either shape the manifest holds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.lineage import loss_curve
from services.evaluator.pii_leak import training_pii
from services.evaluator.plan import RunPlan
from services.evaluator.schemas import EvaluationCreate
from shared.registry.db import Registry

from .conftest import random_adapter, register_adapter
from .test_pii_leak import EMAIL, training_file


def test_the_loss_curve_reads_pairs_and_mappings_and_skips_the_rest() -> None:
    assert loss_curve({"loss_curve": [[1, 2.5], [2, 2.0]]}) == [
        {"step": 1, "loss": 2.5},
        {"step": 2, "loss": 2.0},
    ]
    nested = {"training": {"loss_curve": [{"step": 3, "loss": 1.0}, "junk", [4]]}}
    assert loss_curve(nested) == [{"step": 3, "loss": 1.0}]
    assert loss_curve({}) == [] and loss_curve({"loss_curve": "not a list"}) == []


def test_a_continued_adapter_is_checked_against_its_parents_training_pii_too(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    from shared.artifacts import open_store

    store = open_store(ev_settings)
    name, path = training_file(tmp_path)  # holds EMAIL and PHONE
    clean = tmp_path / "clean.jsonl"
    clean.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        )
        + "\n"
    )

    def version(n: int, file: Path, parent: str | None) -> str:
        manifest: dict[str, Any] = {
            "datasets": {
                "training_file": {"id": None, "name": file.name, "sha256": store.put_file(file)}
            }
        }
        if parent:
            manifest["base_adapter"] = {"id": parent}
        folder = random_adapter(tmp_path / f"a{n}", n)
        return register_adapter(ev_settings, ev_registry, folder, "pii", manifest)

    parent = version(1, path, None)
    child = version(2, clean, parent)
    data = str(path)

    def prepared(candidate: str) -> RunPlan:
        request = EvaluationCreate(candidate=candidate, data=data)
        return service.prepare(ev_settings, ev_registry, request, local=True).plan

    files = prepared(child).training_files
    assert isinstance(files, list) and [n for n, _p in files] == ["clean.jsonl", name]
    found = training_pii(files)
    assert f"email:{EMAIL}" in found.values and found.source == f"clean.jsonl + {name}"
    # Only its own file would have found nothing to leak.
    assert training_pii(files[:1]).values == set()
    # A parent whose data is gone makes the check say why, not pass on part of the data.
    orphan = version(3, clean, "pii@v99")
    why = prepared(orphan).training_files
    assert isinstance(why, str) and "pii@v99" in why
    assert training_pii(why).error == why


def test_a_full_fine_tune_s_lineage_is_read_from_its_manifest_like_an_adapter_s(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    from services.evaluator.contamination import TrainingData
    from shared.artifacts import open_store

    store = open_store(ev_settings)
    name, path = training_file(tmp_path)
    sha = store.put_file(path)
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")  # preparing a run loads no model
    (folder / "config.json").write_text("{}")
    manifest = {
        "kind": "full",
        "datasets": {"training_file": {"id": None, "name": name, "sha256": sha}},
    }
    full = register_adapter(ev_settings, ev_registry, folder, "ft", manifest)
    request = EvaluationCreate(candidate=full, data=str(path))
    plan = service.prepare(ev_settings, ev_registry, request, local=True).plan
    assert plan.candidate.is_full and plan.candidate.weights_sha256 is not None
    files = plan.training_files
    assert isinstance(files, list) and [n for n, _p in files] == [name]
    assert isinstance(plan.training, TrainingData)
    assert plan.training.source["sha256"] == sha and plan.training.rows
