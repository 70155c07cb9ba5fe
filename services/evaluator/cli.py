"""``loraplex eval run|submit|status|report|worker|policy`` and ``loraplex gate run``.

``eval run`` and ``gate run`` evaluate in this process, on the operator's own machine: they may read
any local file and ``--server-url`` may point at any server (no configured key is sent there; name
an endpoint from settings with ``--server`` for that). ``eval submit`` queues for a worker, which
applies the API's rules: endpoints by name, data from the registry or ``LORAPLEX_DATA_DIRS``.

Exit codes (both groups): 0 pass (or no policy), 1 fail, 2 inconclusive, 3 error (bad input,
unreachable endpoint, crashed run, promotion conflict).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from services.evaluator.statuses import ExitCode, RunStatus
from shared.errors import LoraplexError

eval_app = typer.Typer(
    help="Evaluate an adapter version, alias or the base model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
gate_app = typer.Typer(
    help="Gate a candidate on a policy; promote on pass.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app = eval_app  # the skeleton's conventional name

Candidate = Annotated[
    str, typer.Option("--candidate", "-c", help="name@vN, name:alias, name (its prod), or base")
]
Baseline = Annotated[
    str | None,
    typer.Option(
        help="Same forms, or base+fewshot:K (the base model shown K examples from the candidate's "
        "training data); default: the adapter's prod, else the base model; 'none': no baseline"
    ),
]
SuiteOpt = Annotated[str | None, typer.Option(help="Built-in suite (default, full, quick) or file")]
Data = Annotated[
    str | None,
    typer.Option(help="Data file or dataset id; default: the candidate's validation split"),
]
Limit = Annotated[int | None, typer.Option(help="Use only the first N items")]
ServerUrl = Annotated[
    str | None,
    typer.Option(
        help="Ad-hoc OpenAI-compatible server for generation/judge, called without a key "
        "(to send a key, configure the endpoint and use --server)"
    ),
]
ServerName = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Endpoint named in settings (LORAPLEX_ENDPOINTS; default 'server' = "
        "LORAPLEX_SERVER_URL, with its key)",
    ),
]
Out = Annotated[
    Path | None, typer.Option(help="Also copy result.json, junit.xml, report.html here")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result JSON")]


def _settings() -> Any:
    from services.evaluator.config import EvaluatorSettings
    from shared.settings import load_settings

    return load_settings(EvaluatorSettings)


def _fail(exc: BaseException) -> None:
    if isinstance(exc, LoraplexError):
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    else:
        typer.secho(f"error: {type(exc).__name__}: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(ExitCode.ERROR)


def _run(request: Any, as_json: bool, out: Path | None, quiet: bool) -> None:
    from services.evaluator import service
    from services.evaluator.cli_output import print_outcome, tracker_factory
    from shared.registry.db import open_registry

    try:
        settings = _settings()
        registry = open_registry(settings)
        outcome = service.run_now(settings, registry, request, tracker_factory(quiet))
    except Exception as exc:
        _fail(exc)
    print_outcome(outcome, as_json, out)
    raise typer.Exit(outcome.exit_code)


@eval_app.command("run")
def eval_run(
    candidate: Candidate,
    baseline: Baseline = None,
    suite: SuiteOpt = None,
    data: Data = None,
    policy: Annotated[Path | None, typer.Option(help="Gate policy YAML (optional)")] = None,
    limit: Limit = None,
    server: ServerName = None,
    server_url: ServerUrl = None,
    prompt_field: Annotated[str | None, typer.Option(help="Custom prompt field")] = None,
    reference_field: Annotated[str | None, typer.Option(help="Custom reference field")] = None,
    keep_markup: Annotated[
        bool | None,
        typer.Option(
            "--keep-markup/--strip-markup",
            help="Keep HTML in the data when cleaning it (default: as the candidate was trained)",
        ),
    ] = None,
    out: Out = None,
    as_json: AsJson = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar")] = False,
) -> None:
    """Evaluate now, in this process; store results; exit with the gate's code if a policy is given."""
    from services.evaluator.schemas import EvaluationCreate

    request = EvaluationCreate(
        candidate=candidate,
        baseline=baseline,
        suite=suite,
        data=data,
        policy=str(policy) if policy else None,
        limit=limit,
        server=server,
        server_url=server_url,
        prompt_field=prompt_field,
        reference_field=reference_field,
        keep_markup=keep_markup,
    )
    _run(request, as_json, out, quiet)


@gate_app.command("run")
def gate_run(
    policy: Annotated[Path, typer.Option(help="Gate policy YAML")],
    candidate: Candidate,
    baseline: Baseline = None,
    promote: Annotated[
        str | None, typer.Option(help="Alias to move to the candidate on pass")
    ] = None,
    suite: SuiteOpt = None,
    data: Data = None,
    limit: Limit = None,
    server: ServerName = None,
    server_url: ServerUrl = None,
    out: Out = None,
    as_json: AsJson = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar")] = False,
) -> None:
    """Evaluate the candidate for the policy's metrics and decide; with --promote, move the alias
    (compare-and-set) only on pass. Exit 0 pass, 1 fail, 2 inconclusive, 3 error."""
    from services.evaluator.schemas import EvaluationCreate

    request = EvaluationCreate(
        candidate=candidate,
        baseline=baseline,
        suite=suite,
        data=data,
        policy=str(policy),
        promote=promote,
        limit=limit,
        server=server,
        server_url=server_url,
    )
    _run(request, as_json, out, quiet)


@eval_app.command("submit")
def eval_submit(
    candidate: Candidate,
    baseline: Baseline = None,
    suite: SuiteOpt = None,
    data: Data = None,
    policy: Annotated[Path | None, typer.Option(help="Gate policy YAML (optional)")] = None,
    promote: Annotated[str | None, typer.Option(help="Alias to move on pass")] = None,
    limit: Limit = None,
    server: ServerName = None,
) -> None:
    """Validate and queue an evaluation for a worker (`loraplex eval worker`); prints its id.

    The policy and a suite file are sent inline (the worker may not see this machine's files);
    --data must be a registered file id or a path under LORAPLEX_DATA_DIRS."""
    from services.evaluator import service
    from services.evaluator.schemas import EvaluationCreate
    from shared.registry.db import open_registry

    try:
        request = EvaluationCreate(
            candidate=candidate,
            baseline=baseline,
            suite=_inline_suite(suite),
            data=data,
            policy=_read(policy) if policy else None,
            promote=promote,
            limit=limit,
            server=server,
        )
        settings = _settings()
        run_id = service.submit(settings, open_registry(settings), request)
    except Exception as exc:
        _fail(exc)
    typer.echo(run_id)


def _read(path: Path) -> str:
    if not path.is_file():
        raise LoraplexError(f"file {path} does not exist")
    return path.read_text()


def _inline_suite(suite: str | None) -> str | dict[str, Any] | None:
    """A suite file's content as a mapping; a built-in suite name as it is."""
    if suite is None or not Path(suite).suffix:
        return suite
    import yaml

    data = yaml.safe_load(_read(Path(suite))) or {}
    if not isinstance(data, dict):
        raise LoraplexError(f"suite file {suite} is not a YAML mapping")
    data.setdefault("name", Path(suite).stem)
    return data


@eval_app.command("status")
def eval_status(
    run_id: Annotated[str, typer.Argument(help="Evaluation id")],
    wait: Annotated[bool, typer.Option(help="Wait until it finishes; exit with its code")] = False,
) -> None:
    """Show a run's status, progress and results."""
    from services.evaluator import service
    from shared.registry.db import open_registry

    try:
        settings = _settings()
        registry = open_registry(settings)
        pub = service.public(service.get_run(registry, run_id))
        while wait and pub.status in (RunStatus.QUEUED, RunStatus.RUNNING):
            time.sleep(2)
            pub = service.public(service.get_run(registry, run_id))
    except Exception as exc:
        _fail(exc)
    typer.echo(pub.model_dump_json(indent=1))
    if wait:
        raise typer.Exit(pub.exit_code if pub.exit_code is not None else ExitCode.ERROR)


@eval_app.command("report")
def eval_report(
    run_id: Annotated[str, typer.Argument(help="Evaluation id")],
    fmt: Annotated[str, typer.Option("--format", help="html, json or junit")] = "html",
    path_only: Annotated[bool, typer.Option("--path", help="Print the file path only")] = False,
) -> None:
    """Print a finished run's report (or its path)."""
    from services.evaluator import service
    from shared.registry.db import open_registry

    names = {"html": "report.html", "json": "result.json", "junit": "junit.xml"}
    try:
        if fmt not in names:
            raise typer.BadParameter(f"--format must be one of {', '.join(names)}")
        settings = _settings()
        row = service.get_run(open_registry(settings), run_id)
        if not row.report_path:
            raise LoraplexError(f"evaluation {run_id} has no report (status {row.status})")
        path = Path(row.report_path).with_name(names[fmt])
    except Exception as exc:
        _fail(exc)
    typer.echo(str(path) if path_only else path.read_text())


@eval_app.command("worker")
def eval_worker(
    once: Annotated[bool, typer.Option(help="Process at most one queued run, then exit")] = False,
) -> None:
    """Claim queued evaluations from the registry and run them (heartbeats; runs of silent
    workers taken over). SIGTERM gives the current run back to the queue and exits 0."""
    from services.evaluator.worker import main
    from shared.logs import configure

    try:
        settings = _settings()
        configure("evaluator-worker", settings.log_level)
        code = main(settings, once=once)
    except Exception as exc:
        _fail(exc)
    raise typer.Exit(code)


policy_app = typer.Typer(
    help="Gate policies in the registry (versioned, content-hashed); protected aliases use them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
eval_app.add_typer(policy_app, name="policy")


def _actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


@policy_app.command("register")
def policy_register(
    file: Annotated[Path, typer.Argument(help="Gate policy YAML")],
    name: Annotated[str, typer.Option(help="Policy name in the registry")],
) -> None:
    """Validate the policy and store it as the next version of NAME (the same content twice is
    one version); prints name, version and sha256."""
    from services.evaluator import service
    from shared.registry.db import open_registry

    try:
        text = _read(file)
        settings = _settings()
        row = service.register_policy(open_registry(settings), name, text, actor=_actor())
    except Exception as exc:
        _fail(exc)
    typer.echo(json.dumps({k: row[k] for k in ("name", "version", "sha256")}))


@policy_app.command("show")
def policy_show(
    name: Annotated[str, typer.Argument(help="Policy name")],
    version: Annotated[int | None, typer.Option(help="Version; default the latest")] = None,
) -> None:
    """Print a registered policy (body, version, sha256) as JSON."""
    from services.evaluator import service
    from shared.registry.db import open_registry

    try:
        settings = _settings()
        row = service.get_policy(open_registry(settings), name, version)
    except Exception as exc:
        _fail(exc)
    typer.echo(json.dumps(row, indent=1, default=str))


@eval_app.command("api")
def eval_api() -> None:
    """Run the evaluator API (LORAPLEX_EVALUATOR_HOST / _PORT, default 127.0.0.1:8002)."""
    from services.evaluator.api.app import main

    main()
