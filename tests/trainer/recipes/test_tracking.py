"""`services.trainer.recipes.tracking`: a job with ``integrations`` writes to each tracker it named,
and each tracker's own reader reads back the loss the job reported at each step: TensorBoard's
event reader, MLflow's client on its store (parameters and the job id too), and W&B's offline run
file decoded with W&B's own record schema. A job without integrations writes nothing."""

from __future__ import annotations

import importlib
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.trainer.config import TrainerSettings
from services.trainer.recipes import tracking
from services.trainer.recipes.context import RecipeContext
from tests.trainer.conftest import RecordingReporter, order_chat, write_jsonl
from tests.trainer.recipes.specs import make_ctx, sft_spec

ALL = [{"type": "tensorboard"}, {"type": "mlflow"}, {"type": "wandb", "wandb": {"tags": ["t"]}}]


def test_no_integration_no_tracker(tmp_path: Path) -> None:
    reporter = RecordingReporter()
    assert tracking.callbacks(make_ctx(tmp_path, reporter=reporter)) == []
    assert reporter.events == []


def test_runs_are_named_by_the_job_and_outlive_its_scratch_folder(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {**sft_spec(), "integrations": [{"type": "tensorboard"}]})
    ctx.job_id = "ftjob-abc"
    tracking_dir = ctx.settings.tracking_dir
    assert tracking.tensorboard_dir(ctx) == tracking_dir / "tensorboard" / "ftjob-abc"
    assert tracking.wandb_dir(ctx) == tracking_dir / "wandb" / "ftjob-abc"
    for folder in (tracking.tensorboard_dir(ctx), tracking.wandb_dir(ctx)):
        assert not folder.is_relative_to(ctx.output_dir)
    ctx.job_id = None  # `loraplex train run`: the adapter name and the time
    assert tracking.run_name(ctx).startswith(f"{ctx.adapter_name}-")


def test_only_rank_zero_of_a_multi_process_job_writes_tensorboard_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(tmp_path, {**sft_spec(), "integrations": [{"type": "tensorboard"}]})
    ctx.job_id = "ftjob-ranks"
    monkeypatch.setenv("RANK", "1")
    assert tracking.callbacks(ctx) == []
    assert not tracking.tensorboard_dir(ctx).exists()
    monkeypatch.setenv("RANK", "0")
    assert len(tracking.callbacks(ctx)) == 1
    assert any(tracking.tensorboard_dir(ctx).iterdir())


def test_mlflow_goes_to_the_configured_server_else_a_local_store(tmp_path: Path) -> None:
    local = TrainerSettings(data_dir=tmp_path)
    assert tracking.mlflow_uri(local) == f"sqlite:///{tmp_path / 'tracking/mlflow/mlflow.db'}"
    server = TrainerSettings(data_dir=tmp_path, mlflow_tracking_uri="https://mlflow.internal")
    assert tracking.mlflow_uri(server) == "https://mlflow.internal"


def test_parameters_are_hyperparameters_not_places_or_secrets(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    args = SimpleNamespace(
        to_dict=lambda: {
            "learning_rate": 0.01,
            "seed": 3,
            "bf16": False,
            "lr_scheduler_type": "linear",
            "output_dir": "/data/x",
            "logging_dir": "/data/y",
            "hub_token": "secret",
            "report_to": "none",
            "optim_args": None,
            "fsdp": [],
        }
    )
    params = tracking.run_params(ctx, args)
    assert {k: params[k] for k in ("learning_rate", "seed", "bf16", "lr_scheduler_type")} == {
        "learning_rate": 0.01,
        "seed": 3,
        "bf16": False,
        "lr_scheduler_type": "linear",
    }
    assert params["loraplex.method"] == "supervised" and params["lora.r"] == ctx.spec.lora.r
    assert not {"output_dir", "logging_dir", "hub_token", "report_to", "optim_args", "fsdp"} & set(
        params
    )


class FakeTracker:
    label = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("start", params["learning_rate"]))
        return {"at": "here"}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append(("log", step, metrics))

    def end(self, status: str) -> None:
        self.calls.append(("end", status))


@pytest.mark.parametrize(("stop", "status"), [(None, "FINISHED"), (0, "KILLED")])
def test_the_callback_logs_the_trainers_names_and_ends_killed_on_a_stop(
    tmp_path: Path, stop: int | None, status: str
) -> None:
    reporter = RecordingReporter(stop_after_metrics=stop)
    tracker = FakeTracker()
    callback = tracking.tracker_callback(make_ctx(tmp_path, reporter=reporter), tracker, "fake")
    args = SimpleNamespace(to_dict=lambda: {"learning_rate": 0.1})
    other_rank = SimpleNamespace(is_world_process_zero=False, global_step=0)
    callback.on_train_begin(args, other_rank, None)
    callback.on_log(args, other_rank, None, logs={"loss": 9.0})
    assert tracker.calls == []  # only the first process of a multi-process job tracks
    state = SimpleNamespace(is_world_process_zero=True, global_step=3)
    callback.on_train_begin(args, state, None)
    callback.on_log(args, state, None, logs={"loss": 1.5, "eval_loss": 2, "flag": True, "s": "x"})
    callback.on_train_end(args, state, None)
    assert tracker.calls == [
        ("start", 0.1),
        ("log", 3, {"train/loss": 1.5, "eval/loss": 2.0}),
        ("end", status),
    ]
    assert reporter.events == [
        {
            "message": "fake run: {'at': 'here'}",
            "level": "info",
            "type": "message",
            "data": {"fake": {"at": "here"}},
        }
    ]


def read_wandb_records(run_file: Path) -> list[Any]:
    """Every record of an offline ``.wandb`` file, decoded with W&B's own protobuf schema.

    wandb 0.30/0.31 ship no Python reader of this file (the old ``wandb.sdk.internal.datastore``
    is gone; ``wandb sync`` and ``wandb beta leet`` read it in the Go ``wandb-core``), so the
    framing is read here: the header ``:W&B``, magic 0xBEE1, version 0, then LevelDB-log records
    in 32 KiB blocks, each with a CRC-32 over its type byte and payload, which is checked."""
    # Untyped protobuf classes (wandb ships no stubs for them).
    records_pb: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")
    raw = run_file.read_bytes()
    assert struct.unpack("<4sHB", raw[:7]) == (b":W&B", 0xBEE1, 0)
    block, header = 32768, 7
    records, pending, pos = [], b"", header
    while pos + header <= len(raw):
        if block - pos % block < header:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos : pos + header])
        if (crc, length, kind) == (0, 0, 0):
            pos += block - pos % block
            continue
        data = raw[pos + header : pos + header + length]
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at {pos}"
        pos += header + length
        pending += data
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = records_pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(records: list[Any]) -> dict[int, dict[str, float]]:
    history: dict[int, dict[str, float]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): float(i.value_json) for i in r.history.item}
            history[r.history.step.num] = items
    return history


def job_ctx(settings: TrainerSettings, spec: dict[str, Any], train: Path, job_id: str) -> Any:
    """The worker's context for a job (run_in_process has no job id)."""
    from services.trainer.adapters import store_and_register
    from services.trainer.files import DataFile
    from services.trainer.schemas import JobSpec

    job = JobSpec.model_validate({"training_file": str(train), **spec})
    ctx = RecipeContext(
        spec=job,
        settings=settings,
        train_file=DataFile(train, train.name),
        validation_file=None,
        output_dir=settings.data_dir / "work" / job_id,
        reporter=RecordingReporter(),
        register=lambda folder, manifest, base: store_and_register(
            settings, folder, manifest, base, "tracked"
        ),
        adapter_name="tracked",
        job_id=job_id,
    )
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    return ctx


@pytest.mark.slow
def test_each_tracker_reads_back_the_loss_the_job_reported(
    trainer_model_settings: TrainerSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from services.trainer.methods import get_method

    # An operator's environment cannot make the W&B run go online (no network here either).
    monkeypatch.setenv("WANDB_MODE", "online")
    train = write_jsonl(tmp_path / "sft.jsonl", [order_chat(i) for i in range(8)])
    ctx = job_ctx(trainer_model_settings, {**sft_spec(), "integrations": ALL}, train, "ftjob-t1")
    get_method("supervised").load_recipe()(ctx)
    events = ctx.reporter.events
    reported = {
        e["data"]["step"]: e["data"]["train_loss"]
        for e in events
        if e["type"] == "metrics" and "train_loss" in (e["data"] or {})
    }
    assert sorted(reported) == [1, 2]
    said = {
        k: e["data"][k]
        for e in events
        for k in ("tensorboard", "mlflow", "wandb")
        if k in (e["data"] or {})
    }
    assert set(said) == {"tensorboard", "mlflow", "wandb"}
    tracking_dir = trainer_model_settings.tracking_dir

    # TensorBoard's event reader.
    log_dir = Path(said["tensorboard"])
    assert log_dir == tracking_dir / "tensorboard" / "ftjob-t1"
    tb = EventAccumulator(str(log_dir))
    tb.Reload()
    logged = {e.step: e.value for e in tb.Scalars("train/loss")}
    assert sorted(logged) == [1, 2]
    for step, loss in reported.items():
        assert logged[step] == pytest.approx(loss, rel=1e-4)
    assert "train/learning_rate" in tb.Tags()["scalars"]

    # MLflow's client on the local store: the run found by the job id tag.
    client = MlflowClient(tracking_uri=tracking.mlflow_uri(trainer_model_settings))
    experiment = client.get_experiment_by_name("loraplex")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`loraplex.job_id` = 'ftjob-t1'")
    assert [r.info.run_id for r in runs] == [said["mlflow"]["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "ftjob-t1"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert sorted(history) == [1, 2]
    for step, loss in reported.items():
        assert history[step] == pytest.approx(loss, rel=1e-4)
    assert float(run.data.params["learning_rate"]) > 0
    assert run.data.params["loraplex.method"] == "supervised"
    assert "output_dir" not in run.data.params
    assert "train/learning_rate" in run.data.metrics

    # W&B: the offline run file, decoded with W&B's own records.
    folder = Path(said["wandb"]["folder"])
    assert folder.is_relative_to(tracking_dir / "wandb" / "ftjob-t1")
    assert folder.name.startswith("offline-run-")  # not "run-": it never went online
    (run_file,) = folder.glob("*.wandb")
    records = read_wandb_records(run_file)
    (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (meta.run_id, meta.project, meta.display_name) == ("ftjob-t1", "loraplex", "ftjob-t1")
    assert list(meta.tags) == ["t", "ftjob-t1"]
    config = {i.key: i.value_json for i in meta.config.update}
    assert float(config["learning_rate"]) == float(run.data.params["learning_rate"])
    steps = wandb_history(records)
    assert sorted(s for s in steps if "train/loss" in steps[s]) == [1, 2]
    for step, loss in reported.items():
        assert steps[step]["train/loss"] == pytest.approx(loss, rel=1e-4)
    assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records)


@pytest.mark.slow
def test_mlflow_uses_the_configured_store_and_a_resumed_job_continues_its_run(
    tmp_path: Path,
) -> None:
    """The store comes from settings (here a second SQLite store standing in for a server), and a
    job taken over by another worker logs into the run it started."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'server.db'}"
    settings = TrainerSettings(data_dir=tmp_path / "data", mlflow_tracking_uri=uri)
    spec = {**sft_spec(), "integrations": [{"type": "mlflow", "mlflow": {"experiment_name": "e1"}}]}
    ctx = make_ctx(tmp_path, spec)
    ctx.settings, ctx.job_id = settings, "ftjob-r"
    args = SimpleNamespace(to_dict=lambda: {"learning_rate": 0.5})
    first = tracking.MlflowTracker(ctx, "e1")
    where = first.start(tracking.run_params(ctx, args))
    first.log({"train/loss": 2.0}, 1)
    # The worker died here; a second one resumes the job.
    second = tracking.MlflowTracker(ctx, "e1")
    again = second.start(tracking.run_params(ctx, SimpleNamespace(to_dict=lambda: {})))
    second.log({"train/loss": 1.0}, 2)
    second.end("FINISHED")
    assert (where["resumed"], again["resumed"]) == (False, True)
    assert again["run_id"] == where["run_id"] and where["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(where["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["learning_rate"] == "0.5"
    assert run.data.tags["loraplex.job_id"] == "ftjob-r"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]
    assert not settings.tracking_dir.exists()  # nothing went to the local store


def test_a_run_whose_training_raised_ends_failed_once(tmp_path: Path) -> None:
    """transformers calls no callback when ``train`` raises; ``fail`` ends the run FAILED so the
    tracker does not show a dead job as RUNNING, and a tracker that cannot be told is logged."""
    tracker = FakeTracker()
    callback = tracking.tracker_callback(make_ctx(tmp_path), tracker, "fake")
    args = SimpleNamespace(to_dict=lambda: {"learning_rate": 0.1})
    callback.on_train_begin(args, SimpleNamespace(is_world_process_zero=True, global_step=0), None)

    class Broken:
        def on_failure(self) -> None:
            raise RuntimeError("tracking server down")

    tracking.fail([object(), Broken(), callback])
    tracking.fail([callback])
    assert tracker.calls == [("start", 0.1), ("end", "FAILED")]
