"""``loraplex train ...``: run a recipe in-process, or drive the trainer service.

``run`` needs no service (notebooks, CI); ``submit``/``status``/``events``/``cancel`` talk to the
API; ``serve`` and ``worker`` start the two processes of the service. A YAML config and the HTTP
body are the same :class:`~services.trainer.schemas.JobSpec`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from services.trainer.config import TrainerSettings
from services.trainer.schemas import JobSpec
from services.trainer.statuses import JobStatus
from shared.config_files import load_model
from shared.errors import LoraplexError, ValidationError
from shared.settings import load_settings

if TYPE_CHECKING:
    from services.trainer.files import DataFile

app = typer.Typer(help="Train LoRA adapters (SFT, DPO; LoRA, QLoRA).", no_args_is_help=True)


def load_spec(path: Path) -> tuple[JobSpec, Path]:
    """Read a YAML (or JSON) config into a JobSpec; relative file paths are relative to it."""
    spec = load_model(path, JobSpec, f"config {path}", hint=" of job fields", error=ValidationError)
    return spec, path.parent


def _fail(exc: LoraplexError) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(2 if exc.user_error else 1)


class ConsoleReporter:
    """Events as lines, training progress as a bar."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task: Any = None

    def event(
        self, message: str, *, level: str = "info", type: str = "message", data: Any = None
    ) -> None:
        data = data or {}
        if type == "metrics" and "total_steps" in data and not self.progress.console.is_terminal:
            # No terminal (CI logs): one line per logged step instead of a bar.
            self.progress.console.print(
                f"{message} | lr {data.get('learning_rate') or 0:.2e} | "
                f"{data.get('tokens_per_second') or 0:.0f} tok/s | {data.get('progress')}% | "
                f"eta {data.get('eta_seconds') or 0:.0f}s"
            )
            return
        if type == "metrics" and "total_steps" in data:
            if self.task is None:
                self.task = self.progress.add_task("training", total=data["total_steps"])
            tokens = data.get("tokens_per_second")
            desc = f"loss {data.get('train_loss', 0):.4f}" + (
                f" | {tokens:.0f} tok/s" if tokens else ""
            )
            self.progress.update(self.task, completed=data["step"], description=desc)
            return
        colour = {"error": "red", "warn": "yellow"}.get(level)
        self.progress.console.print(f"[{colour}]{message}[/{colour}]" if colour else message)

    def should_stop(self) -> str | None:
        return None

    def phase(self, status: str) -> None:
        self.progress.console.print(f"status: {status}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Job YAML.")],
    adapter_name: Annotated[str | None, typer.Option(help="Defaults to suffix.")] = None,
    nproc: Annotated[
        int | None,
        typer.Option(help="Training processes under torchrun (DDP); default: the job's processes."),
    ] = None,
) -> None:
    """Run the job in this process (no service needed); registers the adapter version."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from services.trainer.adapters import store_and_register
    from services.trainer.jobs import default_adapter_name
    from services.trainer.launch import RUN_WORK_ENV, RankReporter, run_ranks
    from services.trainer.methods import get_method
    from services.trainer.recipes.context import RecipeContext, Stopped
    from services.trainer.recipes.training import RankDone, world

    rank, _ = world()
    try:
        settings = load_settings(TrainerSettings)
        spec, root = load_spec(config)
        if nproc is not None and nproc != spec.processes:
            spec = _with_processes(spec, nproc)
        name = adapter_name or default_adapter_name(spec)

        train, validation, base_dir, lineage = _job_inputs(settings, spec, root)
        if spec.processes > 1 and RUN_WORK_ENV not in os.environ:
            # The data files are registered now, once; the ranks read them by id.
            ids = {"training_file": train.file_id}
            if validation is not None:
                ids["validation_file"] = validation.file_id
            raise typer.Exit(run_ranks(spec.model_copy(update=ids), name))
        work = Path(os.environ.get(RUN_WORK_ENV) or tempfile.mkdtemp(prefix="loraplex-run-"))
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, disable=rank != 0) as progress:
            reporter: Any = ConsoleReporter(progress) if rank == 0 else RankReporter(rank)
            ctx = RecipeContext(
                spec=spec,
                settings=settings,
                train_file=train,
                validation_file=validation,
                output_dir=work,
                reporter=reporter,
                register=lambda folder, manifest, base: store_and_register(
                    settings, folder, manifest, base, name
                ),
                adapter_name=name,
                base_adapter_dir=base_dir,
                base_adapter_lineage=lineage,
            )
            try:
                result = get_method(spec.method.type).load_recipe()(ctx)
            except (RankDone, Stopped):
                if rank == 0:
                    raise
                return  # rank 0 saves, registers and reports
        shutil.rmtree(work, ignore_errors=True)
        typer.echo(json.dumps({"version_id": result.version_id, "metrics": result.metrics}))
    except LoraplexError as exc:
        _fail(exc)


def _with_processes(spec: JobSpec, processes: int) -> JobSpec:
    """The spec with ``--nproc`` as its ``processes``, checked like the field itself."""
    import pydantic

    try:
        return JobSpec.model_validate({**spec.model_dump(), "processes": processes})
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise ValidationError(f"--nproc (processes): {first['msg']}", param="processes") from exc


def _job_inputs(
    settings: TrainerSettings, spec: JobSpec, root: Path
) -> tuple[DataFile, DataFile | None, Path | None, dict[str, Any] | None]:
    """The config's data files (paths, or ids of uploaded files) as registered files, and the
    folder and lineage of the adapter the job continues from; one transaction, so a missing file
    or adapter leaves nothing registered.

    Like the API path (upload, then the worker reads the stored copy): the adapter's lineage then
    names a file id and hash that the registry and artifact store can give back, which is what the
    evaluator needs to rebuild the validation split. Training reads the stored copy, so the bytes
    trained on are the bytes recorded.
    """
    from services.trainer.files import data_file, get_file, register_local_file
    from services.trainer.jobs import _check_data_file, resolve_base_adapter
    from shared.artifacts import open_store
    from shared.registry.db import open_registry

    registry = open_registry(settings)
    try:
        with registry.session() as session:

            def registered(value: str | None, param: str) -> DataFile | None:
                if value is None:
                    return None
                path = (root / value).expanduser()
                if path.is_file():
                    row = register_local_file(session, settings, path)
                    return data_file(settings, row, path.name)
                if value.startswith("file-"):
                    _check_data_file(session, value, param, spec.method.type)
                    return data_file(settings, get_file(session, value, param))
                raise ValidationError(f"data file {path} does not exist", param=param)

            train = registered(spec.training_file, "training_file")
            validation = registered(spec.validation_file, "validation_file")
            lineage = None
            if spec.base_adapter:
                # A version id or an alias (name:alias), checked as the API checks it.
                version = resolve_base_adapter(session, spec)
                lineage = {"id": version.id, "sha256": version.sha256}
    finally:
        registry.dispose()
    assert train is not None
    base_dir = open_store(settings).get_dir(lineage["sha256"]) if lineage else None
    return train, validation, base_dir, lineage


# -- talking to the service ---------------------------------------------------------------------
def _client() -> Any:
    import httpx

    settings = load_settings(TrainerSettings)
    key = os.environ.get("LORAPLEX_CLIENT_KEY")  # a key with the train/read scopes
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return httpx.Client(base_url=settings.api_url, timeout=60, headers=headers)


def _check(response: Any) -> Any:
    if response.status_code >= 400:
        try:
            err = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            err = {"message": response.text}
        typer.secho(f"error {response.status_code}: {err.get('message')}", fg="red", err=True)
        for detail in err.get("details") or []:
            typer.secho(f"  - {detail}", err=True)
        raise typer.Exit(2 if response.status_code < 500 else 1)
    return response.json()


def _upload(client: Any, root: Path, value: str | None) -> str | None:
    if value is None or value.startswith("file-"):
        return value
    path = (root / value).expanduser()
    with path.open("rb") as fh:
        body = _check(
            client.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"})
        )
    typer.echo(f"uploaded {path.name} as {body['id']}")
    return str(body["id"])


@app.command()
def submit(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    follow: Annotated[bool, typer.Option(help="Stream events until the job ends.")] = False,
) -> None:
    """Upload the config's data files (if paths) and create a job on the service."""
    try:
        spec, root = load_spec(config)
    except LoraplexError as exc:
        _fail(exc)
    with _client() as client:
        body = spec.model_dump(mode="json", exclude_none=True, exclude={"hyperparameters"})
        body["training_file"] = _upload(client, root, spec.training_file)
        if spec.validation_file:
            body["validation_file"] = _upload(client, root, spec.validation_file)
        job = _check(client.post("/v1/fine_tuning/jobs", json=body))
        typer.echo(json.dumps({"id": job["id"], "status": job["status"]}))
        if follow:
            _follow(client, job["id"])


@app.command()
def status(job_id: str) -> None:
    """Print a job."""
    with _client() as client:
        typer.echo(json.dumps(_check(client.get(f"/v1/fine_tuning/jobs/{job_id}")), indent=2))


def _follow(client: Any, job_id: str) -> None:
    with client.stream(
        "GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"stream": "true"}, timeout=None
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "message" in event:
                    typer.echo(f"{event['level']:5} {event['message']}")
    job = _check(client.get(f"/v1/fine_tuning/jobs/{job_id}"))
    typer.echo(json.dumps({"status": job["status"], "fine_tuned_model": job["fine_tuned_model"]}))
    if job["status"] != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


@app.command()
def events(
    job_id: str,
    follow: Annotated[bool, typer.Option(help="Stream until the job ends.")] = False,
    limit: int = 50,
) -> None:
    """Print a job's events (oldest first)."""
    with _client() as client:
        if follow:
            _follow(client, job_id)
            return
        page = _check(client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": limit}))
        for event in reversed(page["data"]):
            stamp = time.strftime("%H:%M:%S", time.localtime(event["created_at"]))
            typer.echo(f"{stamp} {event['level']:5} {event['message']}")


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a job (it stops at its next training step; nothing is kept)."""
    with _client() as client:
        job = _check(client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"))
        typer.echo(json.dumps({"id": job["id"], "status": job["status"]}))


@app.command()
def worker(
    once: Annotated[bool, typer.Option(help="Exit when no job is waiting.")] = False,
) -> None:
    """Run a worker: claim queued jobs and train them."""
    from services.trainer.worker import main

    raise typer.Exit(main(once=once))


@app.command("run-job")
def run_job(job_id: str) -> None:
    """Run one registry job in this process (e.g. inside a Kubernetes Job), then exit.

    The job is claimed like a worker would; with LORAPLEX_WORKER_ID set to the id of the worker that
    already holds it, this process acts as that worker instead.
    """
    from services.trainer.worker import run_one

    raise typer.Exit(run_one(job_id))


@app.command()
def serve() -> None:
    """Run the trainer API (LORAPLEX_TRAINER_HOST / _PORT, default 127.0.0.1:8001)."""
    from services.trainer.api.app import main

    main()


@app.command("api")
def api() -> None:
    """Run the trainer API; the name deployments use (same as ``serve``)."""
    serve()


if __name__ == "__main__":
    app(sys.argv[1:])
