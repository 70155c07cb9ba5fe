"""``make demo``: the release flow end to end on the embedded defaults, no network, no configuration.

1. prepare the base model (once) and generate the example data (250 held-out orders);
2. start the three services as separate processes (trainer API + worker, evaluator API + worker,
   server with a vLLM engine) and wait until the engine is ready;
3. release version 1 of the example adapter: train, evaluate against the base model prompted with
   four training examples (few-shot), gate, promote to ``prod``;
4. ask the adapter (through its alias) and the base model the same question with the ``openai`` SDK;
5. release version 2; from the moment it is trained, a background client keeps calling the alias
   through evaluation, gate and promotion, and every failed request is counted;
6. stop the services, say where the reports and logs are, and print a summary: each version's
   scores, each gate's decision with its minimum detectable difference against its margin, the
   failed-request count and each stage's wall time.

``--seed`` (``LORAPLEX_DEMO_SEED``) changes every seed the demo uses: the generated data and both
training runs. ``--precision`` (``LORAPLEX_DEMO_PRECISION``: auto, bf16, fp32) forces training
precision and the engine's dtype together; ``auto`` lets each pick what the CPU computes fastest.

CPU layout: the phases never overlap (the engine is ready before training starts; the background
client starts once v2 is trained), so each phase gets every core: training, then generation in the
engine. Two busy OpenMP pools on the same cores would slow each other several times over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from services.demo_summary import decidability, release_line, release_summary, report_paths
from services.localstack import LocalStack
from services.release import HttpRelease, Services, load_config
from services.release_config import policy_mapping
from shared.basemodel import prepare_embedded_model, register_base_model
from shared.errors import LoraplexError
from shared.registry.db import open_registry
from shared.settings import SharedSettings, load_settings
from shared.verdicts import ExitCode

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ADAPTER = "extraction"
QUESTION = "Hi, this is Ana Lima. Please send 3 green hoodies in size M to Porto."
SYSTEM = "Extract the order as JSON with keys name, item, quantity, color, size, city."


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, total: int, text: str, t0: float) -> None:
    say(f"\n== [{n}/{total}] {text}  (t+{time.monotonic() - t0:.0f} s)")


def _link_models(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file() and not (dest / item.name).exists():
            os.link(item, dest / item.name)


def _chat(client: Any, model: str) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        max_tokens=64,
        temperature=0,
    )
    answer = raw.parse().choices[0].message.content or ""
    return answer.strip(), raw.headers.get("x-loraplex-adapter-version", "base")


class Traffic:
    """A background client calling the alias in a loop, recording every outcome.

    Paced (``interval_s`` between requests) so that on a 2-core machine it does not starve the
    training it runs alongside; the promotion itself is what it watches.
    """

    interval_s = 0.5

    def __init__(self, base_url: str, model: str, api_key: str) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
        self.model = model
        self.outcomes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                _, version = _chat(self.client, self.model)
                self.outcomes["ok"] += 1
                self.versions[version] += 1
            except Exception as exc:  # every failure counts, whatever its type
                self.outcomes["failed"] += 1
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=120)


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make demo", description="The release flow end to end on the embedded defaults."
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=int(os.environ.get("LORAPLEX_DEMO_SEED") or 7),
        help="seed of the generated data and of both training runs (LORAPLEX_DEMO_SEED, 7)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("LORAPLEX_DEMO_PRECISION") or "auto",
        help="training precision and engine dtype (LORAPLEX_DEMO_PRECISION, auto)",
    )
    parser.add_argument(
        "--items",
        type=int,
        default=int(os.environ.get("LORAPLEX_DEMO_ITEMS") or 250),
        help="held-out orders the gates judge (LORAPLEX_DEMO_ITEMS, 250)",
    )
    args = parser.parse_args(argv)
    if args.precision not in PRECISIONS:
        parser.error(f"--precision must be one of {', '.join(PRECISIONS)}")
    return args


PRECISIONS = ("auto", "bf16", "fp32")
ENGINE_DTYPE = {"bf16": "bfloat16", "fp32": "float32"}


def _configure(cfg: Any, seed: int, precision: str) -> None:
    cfg.training.seed = seed
    hp = cfg.training.method.supervised.hyperparameters
    if precision != "auto":
        hp.precision = precision


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    total = 6
    stages: dict[str, float] = {}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        stages[name] = now - mark
        mark = now

    say(f"seed {args.seed}, precision {args.precision}, {args.items} held-out orders per gate")
    base = load_settings(SharedSettings)
    step(1, total, "prepare the base model and the example data", t0)
    model = prepare_embedded_model(base)
    say(f"base model {model.name} at {model.path} (weights {model.weights_sha256[:12]})")
    demo_dir = base.data_dir / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    _link_models(model.path, demo_dir / "models" / model.path.name)
    demo_settings = SharedSettings(data_dir=demo_dir)
    registry = open_registry(demo_settings)
    with registry.session() as session:
        register_base_model(session, prepare_embedded_model(demo_settings))
    registry.dispose()
    # The demo's own copy of the example data and release configs: nothing in the checkout changes.
    examples = demo_dir / "examples"
    shutil.copytree(EXAMPLES / "release", examples / "release")
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "generate.py"),
            "--out",
            str(examples / "extraction"),
            "--seed",
            str(args.seed),
            "--holdout",
            str(args.items),
        ],
        check=True,
    )
    lap("prepare model and data")

    step(2, total, "start trainer, evaluator and server (vLLM) as separate processes", t0)
    env = {"LORAPLEX_DTYPE": ENGINE_DTYPE[args.precision]} if args.precision != "auto" else {}
    with LocalStack(demo_dir, extra_env=env) as stack:
        # The engine's start is mostly imports in three processes one after another (about 50 s
        # on a fast 2-core machine, 115 s on a slow one), on one core at a time: it overlaps v1's
        # training, which needs no engine, instead of delaying it.
        stack.start(wait_for_server=False)
        say(
            f"trainer {stack.trainer_url}  evaluator {stack.evaluator_url}  "
            f"server {stack.server_url} (its vLLM engine loads while v1 trains)"
        )
        lap("start services")

        def engine_line(version: str) -> None:
            say(f"  {version} trained; the server's engine: {_engine_line(demo_dir)}")

        services = Services(
            trainer_url=stack.trainer_url,
            evaluator_url=stack.evaluator_url,
            server_url=stack.server_url,
            api_key=stack.admin_key,
            reconcile_deadline_s=60,
        )

        step(3, total, f"release {ADAPTER} v1: train, evaluate against the few-shot base, gate", t0)
        cfg, root = load_config(examples / "release" / "v1.yaml")
        cfg.services = services
        _configure(cfg, args.seed, args.precision)
        release1 = HttpRelease(cfg, root, say=say, on_trained=engine_line)
        code = release1.run()
        for name, seconds in release1.timings.items():
            stages[f"v1 {name}"] = seconds
        mark = time.monotonic()
        if code != 0:
            say(f"release v1 did not pass (exit {code}); see the report above")
            first = release_summary(release1.outcome, policy_mapping(root, cfg.evaluation.policy))
            _write_summary(demo_dir, args, code, time.monotonic() - t0, stages, None, [first])
            return code

        step(4, total, "ask the adapter (alias) and the base model the same question", t0)
        from openai import OpenAI

        client = OpenAI(base_url=f"{stack.server_url}/v1", api_key=stack.app_key)
        adapter_answer, version = _chat(client, ADAPTER)
        base_answer, _ = _chat(client, model.name)
        say(f"user:            {QUESTION}")
        say(f"{ADAPTER} ({version}): {adapter_answer}")
        say(f"{model.name}:   {base_answer}")
        lap("ask the alias and the base model")

        step(5, total, f"release {ADAPTER} v2 while a client keeps calling '{ADAPTER}'", t0)
        cfg2, root2 = load_config(examples / "release" / "v2.yaml")
        cfg2.services = services
        _configure(cfg2, args.seed + 1, args.precision)
        traffic = Traffic(stack.server_url, ADAPTER, stack.app_key)

        def start_traffic(version: str) -> None:
            say(f"  {version} trained; a client now calls '{ADAPTER}' until the release is done")
            traffic.start()

        release2 = HttpRelease(cfg2, root2, say=say, on_trained=start_traffic)
        try:
            code = release2.run()
            time.sleep(3)  # a few more requests on the new version
        finally:
            traffic.stop()
        for name, seconds in release2.timings.items():
            stages[f"v2 {name}"] = seconds
        mark = time.monotonic()
        say(
            f"requests during the release: {traffic.outcomes['ok']} ok, "
            f"{traffic.outcomes['failed']} failed; answered by: {dict(traffic.versions)}"
        )
        for err in traffic.errors[:5]:
            say(f"  failure: {err}")
        if code != 0:
            say(f"release v2 did not pass (exit {code})")

        step(6, total, "stop the services", t0)
    lap("stop services")
    reports = report_paths(demo_dir / "evaluations")
    say("HTML reports:")
    for report in reports:
        say(f"  {report}")
    say(f"logs: {demo_dir / 'logs'}")
    say("\nsummary")
    judged = [
        (release1.outcome, policy_mapping(root, cfg.evaluation.policy)),
        (release2.outcome, policy_mapping(root2, cfg2.evaluation.policy)),
    ]
    for outcome, policy in judged:
        say(f"  {release_line(outcome)}")
        for line in decidability(outcome, policy):
            say(f"    {line}")
    say(
        f"  requests to '{ADAPTER}' during the v2 release: {traffic.outcomes['ok']} ok, "
        f"{traffic.outcomes['failed']} failed"
    )
    say("  stage wall times:")
    for name, seconds in stages.items():
        say(f"    {name:<34} {seconds:6.1f} s")
    wall = time.monotonic() - t0
    say(f"\ndemo finished in {wall:.0f} s")
    failed = traffic.outcomes["failed"]
    exit_code = code if code != ExitCode.PASS else (ExitCode.FAIL if failed else ExitCode.PASS)
    releases = [release_summary(outcome, policy) for outcome, policy in judged]
    _write_summary(demo_dir, args, exit_code, wall, stages, traffic, releases)
    return exit_code


def _write_summary(
    demo_dir: Path,
    args: argparse.Namespace,
    exit_code: int,
    wall: float,
    stages: dict[str, float],
    traffic: Traffic | None,
    releases: list[dict[str, Any]],
) -> None:
    """``summary.json`` in the demo directory: what bench/demo_time.py records."""
    summary = {
        "seed": args.seed,
        "precision": args.precision,
        "items": args.items,
        "exit_code": exit_code,
        "wall_s": round(wall, 1),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "requests": (
            {"ok": traffic.outcomes["ok"], "failed": traffic.outcomes["failed"]} if traffic else {}
        ),
        "releases": releases,
    }
    (demo_dir / "summary.json").write_text(json.dumps(summary, indent=1))


def _engine_line(demo_dir: Path) -> str:
    """What the server said about its engine's dtype (the ``engine.started`` event)."""
    try:
        for line in (demo_dir / "logs" / "server.log").read_text(errors="replace").splitlines():
            if "engine.started" in line and "dtype=" in line:
                return "dtype " + line.split("dtype=", 1)[1].split(" command=", 1)[0]
    except OSError:
        pass
    return "dtype unknown"


def main() -> None:
    args = options()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the services are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(run(args))
    except LoraplexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(ExitCode.ERROR)


if __name__ == "__main__":
    main()
