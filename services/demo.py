"""``make demo``: the release flow end to end on the embedded defaults, no network, no configuration.

1. prepare the base model (once) and generate the example data;
2. start the three services as separate processes (trainer API + worker, evaluator API + worker,
   server with a vLLM engine);
3. release version 1 of the example adapter: train, evaluate against the base model, gate, promote
   to ``prod``;
4. ask the adapter (through its alias) and the base model the same question with the ``openai`` SDK;
5. release version 2 while a background client keeps calling the alias, and count failed requests;
6. stop the services and say where the reports are.
"""

from __future__ import annotations

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

from services.localstack import LocalStack
from services.release import HttpRelease, Services, load_config
from shared.basemodel import prepare_embedded_model, register_base_model
from shared.errors import LoraplexError
from shared.registry.db import open_registry
from shared.settings import SharedSettings, load_settings

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
        max_tokens=80,
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

    def __init__(self, base_url: str, model: str) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=f"{base_url}/v1", api_key="demo", max_retries=0)
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

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def _summary(outcome: dict[str, Any]) -> str:
    """One line per release: the task metric for candidate and baseline, the decision."""
    run = outcome.get("run") or {}
    results = run.get("results") or {}
    cand, base = results.get("candidate") or {}, results.get("baseline") or {}
    scores = ", ".join(
        f"{m} {cand[m]:.2f} vs {base.get(m, float('nan')):.2f}"
        for m in ("json_match", "json_valid")
        if isinstance(cand.get(m), float | int)
    )
    promoted = "promoted to prod" if outcome.get("decision") == "pass" else "not promoted"
    return (
        f"{outcome.get('version')}: {scores} (baseline {run.get('baseline') or 'base model'}); "
        f"gate {outcome.get('decision')}, {promoted}"
    )


def run() -> int:
    t0 = time.monotonic()
    total = 6
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
        [sys.executable, str(EXAMPLES / "generate.py"), "--out", str(examples / "extraction")],
        check=True,
    )

    step(2, total, "start trainer, evaluator and server (vLLM) as separate processes", t0)
    with LocalStack(demo_dir, split_cpus=True) as stack:
        # The server's engine loads while v1 trains; the release waits for it before evaluating.
        stack.start(wait_for_server=False)
        say(
            f"trainer {stack.trainer_url}  evaluator {stack.evaluator_url}  server {stack.server_url}"
            " (starting its vLLM engine in the background)"
        )
        split = stack.cpu_plan()
        if split:
            say(
                f"cores: vLLM engine {sorted(split[0])}, training and evaluation {sorted(split[1])}"
            )
        services = Services(
            trainer_url=stack.trainer_url,
            evaluator_url=stack.evaluator_url,
            server_url=stack.server_url,
            reconcile_deadline_s=60,
        )

        step(3, total, f"release {ADAPTER} v1: train, evaluate against the base model, gate", t0)
        cfg, root = load_config(examples / "release" / "v1.yaml")
        cfg.services = services
        release1 = HttpRelease(cfg, root, say=say)
        code = release1.run()
        if code != 0:
            say(f"release v1 did not pass (exit {code}); see the report above")
            return code

        step(4, total, "ask the adapter (alias) and the base model the same question", t0)
        from openai import OpenAI

        client = OpenAI(base_url=f"{stack.server_url}/v1", api_key="demo")
        adapter_answer, version = _chat(client, ADAPTER)
        base_answer, _ = _chat(client, model.name)
        say(f"user:            {QUESTION}")
        say(f"{ADAPTER} ({version}): {adapter_answer}")
        say(f"{model.name}:   {base_answer}")

        step(5, total, f"release {ADAPTER} v2 while a client keeps calling '{ADAPTER}'", t0)
        cfg2, root2 = load_config(examples / "release" / "v2.yaml")
        cfg2.services = services
        release2 = HttpRelease(cfg2, root2, say=say)
        with Traffic(stack.server_url, ADAPTER) as traffic:
            code = release2.run()
            time.sleep(3)  # a few more requests on the new version
        say(
            f"requests during the release: {traffic.outcomes['ok']} ok, "
            f"{traffic.outcomes['failed']} failed; answered by: {dict(traffic.versions)}"
        )
        for err in traffic.errors[:5]:
            say(f"  failure: {err}")
        if code != 0:
            say(f"release v2 did not pass (exit {code})")

        step(6, total, "stop the services", t0)
    reports = sorted((demo_dir / "evaluations").glob("*/report.html"))
    say("HTML reports:")
    for report in reports:
        say(f"  {report}")
    say(f"logs: {demo_dir / 'logs'}")
    say("\nsummary")
    for outcome in (release1.outcome, release2.outcome):
        say(f"  {_summary(outcome)}")
    say(
        f"  requests to '{ADAPTER}' during the v2 release: {traffic.outcomes['ok']} ok, "
        f"{traffic.outcomes['failed']} failed"
    )
    say(f"\ndemo finished in {time.monotonic() - t0:.0f} s")
    failed = traffic.outcomes["failed"]
    return code if code != 0 else (1 if failed else 0)


def main() -> None:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the services are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(run())
    except LoraplexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
