"""``services.trainer.api.app``: the routes' scopes and the upload's body cap, the queue seen by
``/metrics``, and the app run as its own process that the official openai SDK drives through a
full SFT job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from services.trainer.api.app import MULTIPART_OVERHEAD, create_app
from services.trainer.config import TrainerSettings
from shared.artifacts import open_store
from shared.registry.adapters import list_versions
from shared.registry.db import open_registry
from shared.registry.models import TrainingJobRow
from shared.settings import SharedSettings
from tests.trainer.api.requests import lines, upload
from tests.trainer.conftest import (
    BASE,
    Processes,
    order_chat,
    tiny_hyperparameters,
    wait_for,
    write_jsonl,
)

KEYS: list[dict[str, Any]] = [
    {"name": "reader", "key": "sk-reader-0123456789", "scopes": ["read"]},
    {"name": "trainer", "key": "sk-trainer-01234567", "scopes": ["train"]},
]
READER = {"authorization": "Bearer sk-reader-0123456789"}
TRAINER = {"authorization": "Bearer sk-trainer-01234567"}


@pytest.fixture
def keyed(settings: SharedSettings) -> Iterator[TestClient]:
    app = create_app(TrainerSettings(data_dir=settings.data_dir, keys=KEYS))
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("POST", "/v1/files", "train"),
        ("GET", "/v1/files", "read"),
        ("GET", "/v1/files/file-abc/content", "read"),
        ("POST", "/v1/fine_tuning/jobs", "train"),
        ("POST", "/v1/fine_tuning/jobs/ftjob-x/cancel", "train"),
        ("GET", "/v1/fine_tuning/jobs", "read"),
        ("GET", "/v1/fine_tuning/jobs/ftjob-x/events", "read"),
    ],
)
def test_each_route_needs_its_scope(keyed: TestClient, method: str, path: str, scope: str) -> None:
    allowed, refused = (TRAINER, READER) if scope == "train" else (READER, TRAINER)
    denied = keyed.request(method, path, headers=refused)
    assert denied.status_code == 403, denied.text
    assert repr(scope) in denied.json()["error"]["message"]
    # The right key passes the guard: the route itself answers (a 4xx of its own, not a 403).
    assert keyed.request(method, path, headers=allowed).status_code != 403


def test_an_upload_may_exceed_the_json_body_cap_up_to_the_upload_limit(
    settings: SharedSettings,
) -> None:
    content = lines(*[order_chat(i) for i in range(10)])
    app = create_app(
        TrainerSettings(data_dir=settings.data_dir, max_json_bytes=1024, max_upload_bytes=20_000)
    )
    with TestClient(app) as client:
        assert 1024 < len(content) < 20_000
        resp = upload(client, content)
        assert resp.status_code == 200, resp.text
        # A JSON body is still held to the JSON cap.
        big = client.post("/v1/fine_tuning/jobs", json={"model": "x" * 2_000})
        assert big.status_code == 413, big.text


def test_the_upload_cap_leaves_room_for_the_multipart_framing(settings: SharedSettings) -> None:
    limit = 20_000
    app = create_app(TrainerSettings(data_dir=settings.data_dir, max_upload_bytes=limit))
    with TestClient(app) as client:
        headers = {"content-length": str(limit + MULTIPART_OVERHEAD + 1)}
        resp = client.post("/v1/files", content=b"", headers=headers)
        assert resp.status_code == 413 and str(limit + MULTIPART_OVERHEAD) in resp.text


def test_metrics_count_waiting_and_running_jobs(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    registry = open_registry(trainer_settings)
    try:
        with registry.session() as s:
            for i, status in enumerate(
                ["validating_files", "queued", "queued", "running", "succeeded", "cancelled"]
            ):
                s.add(
                    TrainingJobRow(
                        id=f"ftjob-m{i}",
                        status=status,
                        base_model=BASE,
                        adapter_name="m",
                        training_file="file-x",
                        config={"training_file": "file-x"},
                    )
                )
    finally:
        registry.dispose()
    text = client.get("/metrics").text
    assert "loraplex_trainer_registry_up 1.0" in text
    assert "loraplex_trainer_queue_depth 3.0" in text
    assert "loraplex_trainer_jobs_running 1.0" in text


@pytest.mark.slow
def test_openai_sdk_drives_a_full_sft_job(
    procs: Processes, trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    import openai

    url = procs.api()
    procs.worker()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
    with sft_file.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.filename == "sft.jsonl"
    assert [f.id for f in client.files.list()] == [uploaded.id]
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=uploaded.id,
        # Our extra hyperparameters (max_steps, ...) ride along in the same dict.
        method=cast(
            Any,
            {"type": "supervised", "supervised": {"hyperparameters": tiny_hyperparameters()}},
        ),
        suffix="sdk",
        seed=11,
        metadata={"ticket": "42"},
        extra_body={"lora": {"r": 8, "lora_alpha": 16}},
    )
    assert job.status == "validating_files" and job.seed == 11
    final = wait_for(
        lambda: (
            (j := client.fine_tuning.jobs.retrieve(job.id)).status
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        600,
        "the job to finish",
    )
    assert final.status == "succeeded", (final.error, procs.logs())
    assert final.fine_tuned_model == "sdk@v1" and final.finished_at is not None
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))  # auto-paginates
    messages = [e.message for e in events]
    assert any(m.startswith("fine-tuned adapter registered as sdk@v1") for m in messages)
    metrics = [dict(cast(Any, e.data)) for e in events if e.type == "metrics" and e.data]
    metrics = [m for m in metrics if "train_loss" in m]
    assert metrics and {"learning_rate", "tokens_per_second", "progress", "eta_seconds"} <= set(
        metrics[0]
    )
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == 2
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)

    # The registered adapter is a standard PEFT folder: peft loads it on the base and generates.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        (version,) = list_versions(s, "sdk")
        folder = open_store(trainer_model_settings).get_dir(version.sha256)
    registry.dispose()
    base_dir = trainer_model_settings.models_dir / BASE
    model: Any = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), folder
    )
    tok = AutoTokenizer.from_pretrained(base_dir)
    ids: Any = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_openai_sdk_drives_a_full_fine_tuning_job(
    procs: Processes, trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    """``adapter: none`` through the SDK's ``extra_body``: the worker trains every weight and
    registers a complete model folder as a version of kind full, which transformers loads alone
    (no base model, no peft) and generates with."""
    import openai

    from shared.registry.versions import is_full_model

    url = procs.api()
    procs.worker()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
    with sft_file.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="fine-tune")
    # One step, no checkpoint and no validation pass: the recipe's own checks are in
    # tests/trainer/recipes/test_full_model.py; this is the path from the SDK to the registry.
    hyperparameters = tiny_hyperparameters(max_steps=1, save_steps=100)
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=uploaded.id,
        method=cast(
            Any, {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
        ),
        extra_body={"adapter": "none", "data": {"validation_fraction": 0}},
    )
    assert cast(Any, job).adapter == "none" and cast(Any, job).lora is None
    final = wait_for(
        lambda: (
            (j := client.fine_tuning.jobs.retrieve(job.id)).status
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        600,
        "the job to finish",
    )
    assert final.status == "succeeded", (final.error, procs.logs())
    name = f"{BASE}-sft-full"
    assert final.fine_tuned_model == f"{name}@v1"

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        (version,) = list_versions(s, name)
        assert version.rank == 0 and is_full_model(version) and version.job_id == job.id
        folder = open_store(trainer_model_settings).get_dir(version.sha256)
    registry.dispose()
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    ids: Any = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_openai_sdk_drives_a_reinforcement_job_whose_output_the_evaluator_scores(
    procs: Processes, trainer_model_settings: TrainerSettings, tmp_path: Path
) -> None:
    """OpenAI's third job shape, ``method={"type": "reinforcement", ...}`` with a declarative
    grader, runs through the real API and worker; the version it registers is then an evaluator
    subject like any other, scored against the base on the same items."""
    import openai

    from services.evaluator import service
    from services.evaluator.config import EvaluatorSettings
    from services.evaluator.schemas import EvaluationCreate

    capitals = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo")]
    rows = [
        {"messages": [{"role": "user", "content": f"What is the capital of {c}?"}], "answer": a}
        for c, a in capitals
    ]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    grader = {
        "type": "string_check",
        "name": "capital",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "ilike",
    }
    url = procs.api()
    procs.worker()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
    with prompts.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="fine-tune")
    hyperparameters = tiny_hyperparameters(
        num_generations=2, max_completion_length=8, max_length=128
    )
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=uploaded.id,
        method=cast(
            Any,
            {
                "type": "reinforcement",
                "reinforcement": {"grader": grader, "hyperparameters": hyperparameters},
            },
        ),
        suffix="rl-sdk",
        extra_body={"data": {"validation_fraction": 0}},
    )
    final = wait_for(
        lambda: (
            (j := client.fine_tuning.jobs.retrieve(job.id)).status
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        600,
        "the reinforcement job to finish",
    )
    assert final.status == "succeeded", (final.error, procs.logs())
    assert final.fine_tuned_model == "rl-sdk@v1"
    assert final.method is not None and final.method.type == "reinforcement"
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    data = [dict(cast(Any, e.data)) for e in events if e.data]
    rewards = [d for d in data if "reward" in d]
    assert rewards and all(0.0 <= r["reward"] <= 1.0 for r in rewards)

    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        (version,) = list_versions(s, "rl-sdk")
        assert version.manifest["grader"] == grader
    registry.dispose()

    items = tmp_path / "capitals.jsonl"
    items.write_text(
        "".join(
            json.dumps({"messages": r["messages"], "reference": r["answer"]}) + "\n" for r in rows
        )
    )
    suite = {
        "name": "capitals",
        "generation": {
            "enabled": True,
            "backend": "local",
            "metrics": ["exact_match"],
            "decoding": {"max_new_tokens": 6, "temperature": 0.0},
        },
        "contamination": {"enabled": False},
    }
    ev_settings = EvaluatorSettings(data_dir=trainer_model_settings.data_dir)
    ev_registry = open_registry(ev_settings)
    try:
        request = EvaluationCreate(
            candidate="rl-sdk@v1", baseline="base", data=str(items), suite=suite
        )
        result = service.run_now(ev_settings, ev_registry, request).result
    finally:
        ev_registry.dispose()
    assert result.candidate.identity["adapter"] == "rl-sdk@v1"
    assert result.candidate.identity["adapter_sha256"] == version.sha256
    assert result.baseline is not None
    for subject in (result.candidate, result.baseline):
        metric = subject.metrics["exact_match"]
        assert metric.error is None and metric.n == len(rows)
        assert all(item.output for item in subject.items)
