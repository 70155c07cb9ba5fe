"""``loraplex release run release.yaml``: train, evaluate against the release, gate, promote.

One typed config drives the whole release flow. Two ways to run it, same stages, same exit codes:

- **over HTTP** (``services:`` set in the config, or ``--trainer-url``/``--evaluator-url``): the file
  goes to the trainer's ``/v1/files``, the job to ``/v1/fine_tuning/jobs``, the evaluation with its
  policy and ``promote`` to the evaluator's ``/v1/evaluations``; on pass the evaluator moves the alias
  (compare-and-set) and the command waits until the server answers the alias with the new version.
- **in-process** (no services): ``loraplex train run`` then ``loraplex gate run --promote``, each as
  its own process, so one service's libraries never load into another's.

Exit codes are the gate's: 0 pass (promoted), 1 fail, 2 inconclusive, 3 error.

This module orchestrates; it imports the services' request *schemas* only, to validate the one
config up front, never their logic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

from services.evaluator.schemas import EvaluationCreate
from services.release_config import ReleaseConfig as ReleaseConfig
from services.release_config import Services as Services
from services.release_config import load_config as load_config
from services.release_config import policy_mapping, resolve_path
from shared.errors import ConfigError, LoraplexError, SystemFailure
from shared.verdicts import ExitCode, decision_of

app = typer.Typer(help="Train, evaluate, gate and promote in one command.", no_args_is_help=True)


Say = Callable[[str], None]


def _say(message: str) -> None:
    typer.echo(message, err=True)


# -- over HTTP ------------------------------------------------------------------------------------
class HttpRelease:
    """The release flow as a CI system would drive it: plain HTTP calls, then an exit code."""

    def __init__(
        self,
        cfg: ReleaseConfig,
        root: Path,
        say: Say = _say,
        on_trained: Callable[[str], None] | None = None,
    ) -> None:
        assert cfg.services is not None
        self.cfg, self.root, self.svc, self.say = cfg, root, cfg.services, say
        self.on_trained = on_trained  # called with the new version before it is evaluated
        key = self.svc.api_key or os.environ.get("LORAPLEX_CLIENT_KEY") or ""
        self.key = key
        self.http = httpx.Client(
            timeout=httpx.Timeout(60.0, connect=10.0),
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )
        self.outcome: dict[str, Any] = {}  # version, evaluation run, decision (after run())
        self.timings: dict[str, float] = {}  # wall seconds per stage: train, evaluate, serve

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                err = response.json().get("error", {})
            except ValueError:
                err = {"message": response.text[:500]}
            raise SystemFailure(
                f"{response.request.method} {response.request.url} answered "
                f"{response.status_code}: {err.get('message')}",
                details=list(err.get("details") or []),
            )
        data: dict[str, Any] = response.json()
        return data

    def upload(self, path: str) -> str:
        file = Path(path)
        with file.open("rb") as fh:
            body = self._json(
                self.http.post(
                    f"{self.svc.trainer_url}/v1/files",
                    data={"purpose": "fine-tune"},
                    files={"file": (file.name, fh, "application/jsonl")},
                )
            )
        self.say(f"  uploaded {file.name} -> {body['id']} ({body.get('bytes')} bytes)")
        return str(body["id"])

    def train(self) -> str:
        spec = self.cfg.training
        train_path = resolve_path(self.root, spec.training_file)
        assert train_path is not None
        body = spec.model_dump(mode="json", exclude_none=True, by_alias=True)
        body["training_file"] = self.upload(train_path)
        if spec.validation_file:
            valid = resolve_path(self.root, spec.validation_file)
            assert valid is not None
            body["validation_file"] = self.upload(valid)
        body["suffix"] = self.cfg.adapter
        job = self._json(self.http.post(f"{self.svc.trainer_url}/v1/fine_tuning/jobs", json=body))
        job_id = job["id"]
        self.say(f"  job {job_id} {job['status']}")
        seen: set[str] = set()
        last_progress = -1.0
        while True:
            # Like OpenAI's, the events list is newest first and `after` pages towards older
            # events, so poll the newest page and print what has not been printed yet.
            events = self._json(
                self.http.get(
                    f"{self.svc.trainer_url}/v1/fine_tuning/jobs/{job_id}/events",
                    params={"limit": 100},
                )
            )["data"]
            for event in reversed(events):
                if event["id"] in seen:
                    continue
                seen.add(event["id"])
                if event.get("type") != "metrics":
                    self.say(f"    {event['message']}")
            job = self._json(self.http.get(f"{self.svc.trainer_url}/v1/fine_tuning/jobs/{job_id}"))
            progress = float(job.get("progress") or 0.0)  # percent
            if progress - last_progress >= 10:
                last_progress = progress
                self.say(f"  training {progress:.0f}%")
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(self.svc.poll_s)
        if job["status"] != "succeeded":
            err = job.get("error") or {}
            raise SystemFailure(
                f"training job {job_id} {job['status']}: {err.get('message')}",
                details=list(err.get("details") or []),
            )
        version = str(job["fine_tuned_model"])
        self.say(f"  trained {version}")
        return version

    def evaluate(self, version: str) -> dict[str, Any]:
        """One evaluation per baseline, in order; only the last asks for the promotion, and a
        decision other than pass stops the release there."""
        baselines = self.cfg.evaluation.baselines()
        for i, baseline in enumerate(baselines):
            last = i == len(baselines) - 1
            run = self._evaluate(version, baseline, self.cfg.promote if last else None)
            if not last and (run["status"] == "failed" or run.get("decision") != "pass"):
                return run
        return run

    def _evaluate(self, version: str, baseline: str | None, promote: str | None) -> dict[str, Any]:
        ev = self.cfg.evaluation
        request = EvaluationCreate(
            candidate=version,
            baseline=baseline,
            suite=ev.suite,
            data=resolve_path(self.root, ev.data),
            policy=policy_mapping(self.root, ev.policy),
            promote=promote,
            limit=ev.limit,
        )
        run = self._json(
            self.http.post(
                f"{self.svc.evaluator_url}/v1/evaluations",
                json=request.model_dump(mode="json", exclude_none=True),
            )
        )
        run_id = run["id"]
        self.say(f"  evaluation {run_id} against {run.get('baseline') or 'the base model'}")
        shown = ""
        while run["status"] not in ("succeeded", "failed"):
            time.sleep(self.svc.poll_s)
            run = self._json(self.http.get(f"{self.svc.evaluator_url}/v1/evaluations/{run_id}"))
            line = f"  {run.get('stage') or run['status']} {float(run.get('progress') or 0) * 100:.0f}%"
            if line != shown:
                self.say(line)
                shown = line
        return run

    def wait_for_alias(self, version: str) -> float:
        """Seconds until the server answered ``adapter:alias`` with ``version``."""
        assert self.svc.server_url is not None
        name = f"{self.cfg.adapter}:{self.cfg.promote}"
        headers = {"Authorization": f"Bearer {self.svc.server_api_key or self.key or 'none'}"}
        start = time.monotonic()
        while time.monotonic() - start < self.svc.reconcile_deadline_s:
            try:
                response = self.http.post(
                    f"{self.svc.server_url}/v1/completions",
                    json={"model": name, "prompt": "ping", "max_tokens": 1},
                    headers=headers,
                )
                if response.headers.get("x-loraplex-adapter-version") == version:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise SystemFailure(
            f"the server did not answer {name} with {version} within "
            f"{self.svc.reconcile_deadline_s:.0f} s (reconcile deadline)"
        )

    def wait_for_server(self) -> None:
        """The evaluator generates through the server: wait for it to be ready (it may still be
        loading its engine when a release starts right after the stack)."""
        if not self.svc.server_url:
            return
        url = f"{self.svc.server_url}/ready"
        start = time.monotonic()
        told = False
        while True:
            try:
                if self.http.get(url, timeout=5.0).status_code == 200:
                    if told:
                        self.say(f"  server ready after {time.monotonic() - start:.0f} s")
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() - start > self.svc.server_ready_timeout_s:
                raise SystemFailure(
                    f"the server at {self.svc.server_url} was not ready within "
                    f"{self.svc.server_ready_timeout_s:.0f} s (GET /ready)"
                )
            if not told:
                self.say(f"  waiting for the server at {self.svc.server_url} to be ready")
                told = True
            time.sleep(1.0)

    def run(self) -> int:
        self.say(f"[1/3] train {self.cfg.adapter} on {self.cfg.training.model}")
        started = time.monotonic()
        version = self.train()
        self.timings["train"] = time.monotonic() - started
        if self.on_trained is not None:
            self.on_trained(version)
        self.say(f"[2/3] evaluate and gate {version}")
        started = time.monotonic()
        self.wait_for_server()
        if (waited := time.monotonic() - started) >= 1.0:
            self.timings["wait for the server"] = waited
        started = time.monotonic()
        run = self.evaluate(version)
        self.timings["evaluate and gate"] = time.monotonic() - started
        if run["status"] == "failed":
            err = run.get("error") or {}
            raise SystemFailure(f"evaluation {run['id']} failed: {err.get('message')}")
        decision = str(run.get("decision") or "error")
        self.say(f"[3/3] decision: {decision}")
        for line in (run.get("results") or {}).get("gate", {}).get("reasons", []) or []:
            self.say(f"  - {line}")
        report = run.get("report_url")
        if report:
            self.say(f"  report: {self.svc.evaluator_url}{report}")
        self.outcome = {"version": version, "run": run, "decision": decision}
        if decision == "pass" and self.svc.server_url:
            seconds = self.wait_for_alias(version)
            self.timings["served after promotion"] = seconds
            self.outcome["served_after_s"] = seconds
            self.say(
                f"  {self.cfg.adapter}:{self.cfg.promote} -> {version} (served after {seconds:.1f} s)"
            )
        typer.echo(
            json.dumps(
                {
                    "version": version,
                    "evaluation": run["id"],
                    "decision": decision,
                    "report": report,
                    "alias": f"{self.cfg.adapter}:{self.cfg.promote}",
                    "promoted": decision == "pass",
                }
            )
        )
        return ExitCode.of(decision)


# -- in-process -----------------------------------------------------------------------------------
def _loraplex(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


def run_in_process(cfg: ReleaseConfig, root: Path, say: Say = _say) -> int:
    with tempfile.TemporaryDirectory(prefix="loraplex-release-") as tmp:
        spec = cfg.training.model_dump(mode="json", exclude_none=True, by_alias=True)
        spec["training_file"] = resolve_path(root, cfg.training.training_file)
        if cfg.training.validation_file:
            spec["validation_file"] = resolve_path(root, cfg.training.validation_file)
        spec["suffix"] = cfg.adapter
        job_yaml = Path(tmp) / "job.yaml"
        job_yaml.write_text(yaml.safe_dump(spec))
        say(f"[1/3] train {cfg.adapter} on {cfg.training.model} (in-process)")
        train = subprocess.run(
            _loraplex("train", "run", str(job_yaml), "--adapter-name", cfg.adapter),
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if train.returncode != 0:
            raise SystemFailure(f"training failed (exit {train.returncode})")
        version = json.loads(train.stdout.strip().splitlines()[-1])["version_id"]
        say(f"  trained {version}")
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(yaml.safe_dump(policy_mapping(root, cfg.evaluation.policy)))
        say(f"[2/3] evaluate and gate {version}")
        ev = cfg.evaluation
        baselines = ev.baselines()
        for i, baseline in enumerate(baselines):
            args = ["gate", "run", "--policy", str(policy), "--candidate", version]
            if i == len(baselines) - 1:  # only the last evaluation asks for the promotion
                args += ["--promote", cfg.promote]
            for flag, value in (
                ("--baseline", baseline),
                ("--suite", ev.suite if isinstance(ev.suite, str) else None),
                ("--data", resolve_path(root, ev.data)),
                ("--limit", str(ev.limit) if ev.limit else None),
            ):
                if value is not None:
                    args += [flag, value]
            gate = subprocess.run(_loraplex(*args), check=False)
            if gate.returncode != 0:
                break
        decision = decision_of(gate.returncode)
        say(
            f"[3/3] decision: {decision}; {cfg.adapter}:{cfg.promote} "
            + (f"-> {version}" if decision == "pass" else "unchanged")
        )
        return gate.returncode


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="release.yaml")],
    trainer_url: Annotated[str | None, typer.Option(help="Drive a running trainer.")] = None,
    evaluator_url: Annotated[str | None, typer.Option(help="Drive a running evaluator.")] = None,
    server_url: Annotated[str | None, typer.Option(help="Wait until it serves the alias.")] = None,
) -> None:
    """Train, evaluate against the current release (or the base model), gate, and promote on pass.

    Exit 0 pass, 1 fail, 2 inconclusive, 3 error."""
    try:
        cfg, root = load_config(config)
        if trainer_url or evaluator_url:
            if not (trainer_url and evaluator_url):
                raise ConfigError("give both --trainer-url and --evaluator-url, or neither")
            cfg.services = Services(
                trainer_url=trainer_url, evaluator_url=evaluator_url, server_url=server_url
            )
        code = HttpRelease(cfg, root).run() if cfg.services else run_in_process(cfg, root)
    except LoraplexError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(ExitCode.ERROR) from exc
    raise typer.Exit(code)
