"""Run a suite on a candidate and its baseline and collect every metric with per-item records.

The runner touches no database: it takes resolved subjects and loaded data (a :class:`RunPlan`)
and returns a :class:`RunResult`. Storing, gating and promotion happen in ``service.py``, after the
whole run succeeded, so a failure half-way leaves nothing behind but the failed run's error.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from services.evaluator import forgetting, judge, perplexity
from services.evaluator.data import EvalData, EvalItem
from services.evaluator.generation import (
    ResponseCache,
    check_server,
    generate_local,
    generate_server,
)
from services.evaluator.local_model import LocalModels
from services.evaluator.metrics import catalogue
from services.evaluator.metrics.catalogue import ScoreOptions
from services.evaluator.results import ItemResult, RunResult, SubjectResult
from services.evaluator.subjects import Subject, loss_curve
from services.evaluator.suite import Suite, enabled_components
from shared.errors import SystemFailure, ValidationError
from shared.logs import event

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# progress


class Tracker:
    """Stages with item counts; reports overall fraction and the current stage to a callback."""

    def __init__(
        self,
        stages: list[tuple[str, int]],
        on_update: Callable[[float, str], None] | None = None,
        run_id: str = "",
    ) -> None:
        self.stages = stages
        self.run_id = run_id
        self.total = sum(max(n, 1) for _, n in stages) or 1
        self.done = 0
        self.on_update = on_update
        self.current = ""
        self._stage_done = 0
        self._stage_total = 0

    @contextmanager
    def stage(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        self.current, self._stage_done, self._stage_total = label, 0, max(total, 1)
        self._emit()
        event(log, "evaluation.stage_started", run=self.run_id, stage=label, items=total)
        started = time.perf_counter()

        def advance(n: int = 1) -> None:
            self._stage_done += n
            self.done += n
            self._emit()

        yield advance
        event(
            log,
            "evaluation.stage_finished",
            run=self.run_id,
            stage=label,
            items=total,
            seconds=round(time.perf_counter() - started, 2),
        )
        # Count the whole stage even if a part reported fewer units (cache hits).
        self.done += max(self._stage_total - self._stage_done, 0)
        self._emit()

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total)

    def _emit(self) -> None:
        if self.on_update is not None:
            self.on_update(self.fraction, self.current)


# --------------------------------------------------------------------------------------------
# plan


@dataclass
class RunPlan:
    run_id: str
    candidate: Subject
    baseline: Subject | None
    data: EvalData
    suite: Suite
    server_url: str = ""
    server_api_key: str = ""
    judge_url: str = ""
    judge_model: str = ""
    judge_api_key: str = ""
    cache_dir: Path | None = None
    threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def subjects(self) -> list[tuple[str, Subject]]:
        out = [("candidate", self.candidate)]
        if self.baseline is not None:
            out.append(("baseline", self.baseline))
        return out

    @property
    def items(self) -> list[EvalItem]:
        items = self.data.items
        return items[: self.suite.limit] if self.suite.limit else items

    def generation_backend(self) -> str:
        part = self.suite.generation
        if part.backend == "auto":
            return "server" if self.server_url else "local"
        return part.backend

    def describe(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.label,
            "baseline": self.baseline.label if self.baseline else None,
            "data": self.data.describe(),
            "suite": self.suite.model_dump(mode="json", exclude={"judge": {"api_key"}}),
            "server_url": self.server_url or None,
        }


def validate_plan(plan: RunPlan) -> None:
    """Everything that can be checked before a model is loaded, with clear messages."""
    suite = plan.suite
    needs_prompts = sorted(
        c for c in enabled_components(suite) if catalogue.COMPONENTS[c].needs_prompts
    )
    if needs_prompts and not plan.data.has_prompts:
        text_rows = [i.location for i in plan.data.items if i.is_text][:3]
        raise ValidationError(
            f"{', '.join(needs_prompts)} need prompt + reference rows, but the data has plain "
            f"text rows (e.g. {', '.join(text_rows)}); use the perplexity-only suite `quick`",
            param="data",
        )
    for name in suite.generation.metrics:
        if catalogue.lookup(name) is None or catalogue.spec(name).component != "generation":
            raise catalogue.unknown_metric(name, "generation", param="suite")
    if plan.generation_backend() == "server" and suite.generation.enabled and not plan.server_url:
        raise ValidationError("generation backend `server` needs a server URL", param="server_url")
    if suite.parity.enabled and not plan.server_url:
        raise ValidationError("the serving-parity check needs a server URL", param="server_url")
    if suite.judge.enabled:
        if not plan.judge_url:
            raise ValidationError(
                "the judge needs an OpenAI-compatible endpoint: set judge.endpoint in the suite, "
                "LORAPLEX_JUDGE_URL or LORAPLEX_SERVER_URL",
                param="judge",
            )
        if "pairwise" in suite.judge.modes and plan.baseline is None:
            raise ValidationError("pairwise judging needs a baseline", param="baseline")


def preflight(plan: RunPlan) -> None:
    """Reach every remote endpoint the run will need before doing any heavy work."""
    if plan.suite.judge.enabled:
        try:
            check_server(plan.judge_url, plan.judge_api_key or None)
        except SystemFailure as exc:
            raise SystemFailure(
                f"the judge endpoint {plan.judge_url} is unreachable: {exc.message}",
                param="judge",
            ) from exc
    uses_server = (plan.suite.generation.enabled and plan.generation_backend() == "server") or (
        plan.suite.parity.enabled
        or (plan.suite.lmeval.enabled and plan.suite.lmeval.backend == "local-completions")
    )
    if uses_server:
        check_server(plan.server_url, plan.server_api_key or None)


def stages(plan: RunPlan) -> list[tuple[str, int]]:
    n = len(plan.items)
    out: list[tuple[str, int]] = []
    suite = plan.suite
    for role, _subject in plan.subjects:
        if suite.generation.enabled or suite.judge.enabled:
            out.append((f"generate ({role})", n))
        if suite.perplexity.enabled:
            out.append((f"perplexity ({role})", n))
        if suite.forgetting.enabled:
            out.append((f"forgetting ({role})", forgetting.count(suite.forgetting.data)))
        if suite.lmeval.enabled:
            out.append((f"lm-eval ({role})", len(suite.lmeval.tasks)))
    if suite.judge.enabled:
        jn = min(n, suite.judge.max_items or n)
        out.append(("judge", 2 * jn * len(suite.judge.modes) + 2 * suite.judge.anchors))
    if suite.parity.enabled:
        out.append(("parity", suite.parity.items))
    return out


# --------------------------------------------------------------------------------------------
# metrics


def _new_subject(role: Any, subject: Subject, items: list[EvalItem]) -> SubjectResult:
    return SubjectResult(
        role=role,
        model=subject.label,
        identity=subject.identity(),
        items=[ItemResult(item_id=i.item_id, item_hash=i.item_hash) for i in items],
    )


def generation_metrics(
    result: SubjectResult,
    items: list[EvalItem],
    outputs: list[str],
    metrics: list[str],
    settings: dict[str, Any],
    *,
    rouge_stemmer: bool,
    confidence: float,
) -> None:
    by_id = result.item_map()
    for item, out in zip(items, outputs, strict=True):
        by_id[item.item_id].output = out
    options = ScoreOptions(rouge_stemmer=rouge_stemmer)
    for name in metrics:
        spec = catalogue.spec(name)
        assert spec.score is not None and spec.definition is not None  # test_registry checks it
        values = {i.item_id: spec.score(o, i, options) for i, o in zip(items, outputs, strict=True)}
        definition = spec.definition(options)
        result.add_metric(spec, values, {**definition, **settings}, confidence=confidence)


def perplexity_metrics(
    result: SubjectResult,
    items: list[EvalItem],
    scores: list[perplexity.ItemNLL],
    settings: dict[str, Any],
    confidence: float,
) -> None:
    pairs = list(zip(items, scores, strict=True))
    for item, s in pairs:
        rec = result.item_map()[item.item_id]
        rec.extra["nll"] = s.nll
        rec.extra["n_tokens"] = s.n_tokens
        rec.extra["n_bytes"] = s.n_bytes
    options = ScoreOptions()
    for name in catalogue.metrics_of("perplexity"):
        spec = catalogue.spec(name)
        assert spec.score is not None and spec.definition is not None  # test_registry checks it
        values = {i.item_id: spec.score(s, options) for i, s in pairs}
        definition = spec.definition(options)
        result.add_metric(spec, values, {**definition, **settings}, confidence=confidence)


# --------------------------------------------------------------------------------------------
# the run


class Runner:
    def __init__(self, plan: RunPlan, tracker: Tracker | None = None) -> None:
        self.plan = plan
        self.tracker = tracker or Tracker(stages(plan), run_id=plan.run_id)
        self._models: LocalModels | None = None
        self.timings: dict[str, float] = {}

    @property
    def models(self) -> LocalModels:
        if self._models is None:
            start = time.perf_counter()
            self._models = LocalModels(
                self.plan.candidate, dtype=self.plan.suite.dtype, threads=self.plan.threads or None
            )
            self.timings["load_model_s"] = time.perf_counter() - start
        return self._models

    def _cache(self, subject: Subject, backend: str) -> ResponseCache | None:
        part = self.plan.suite.generation
        if not part.cache or not part.decoding.greedy or self.plan.cache_dir is None:
            return None
        backend_id: dict[str, Any] = {"backend": backend}
        if backend == "server":
            backend_id["server_url"] = self.plan.server_url
            backend_id["served_name"] = subject.served_name
        else:
            backend_id["dtype"] = self.plan.suite.dtype
            backend_id["transformers"] = version("transformers")
        ident = subject.identity_hash(decoding=part.decoding.model_dump(), **backend_id)
        return ResponseCache(self.plan.cache_dir / "generations", ident)

    def generate(
        self, role: str, subject: Subject, items: list[EvalItem]
    ) -> tuple[list[str], dict[str, Any]]:
        part = self.plan.suite.generation
        backend = self.plan.generation_backend()
        cache = self._cache(subject, backend)
        cached = cache.get_many(items) if cache else {}
        todo = [i for i in items if ResponseCache.key(i) not in cached]
        start = time.perf_counter()
        with self.tracker.stage(f"generate ({role})", len(items)) as advance:
            advance(len(items) - len(todo))
            if todo and backend == "server":
                fresh = generate_server(
                    self.plan.server_url,
                    subject,
                    todo,
                    part.decoding,
                    concurrency=part.concurrency,
                    api_key=self.plan.server_api_key or None,
                    progress=advance,
                )
            elif todo:
                fresh = generate_local(
                    self.models,
                    subject,
                    todo,
                    part.decoding,
                    batch_size=part.batch_size,
                    progress=advance,
                )
            else:
                fresh = []
        self.timings[f"generate_{role}_s"] = time.perf_counter() - start
        new = {ResponseCache.key(i): o for i, o in zip(todo, fresh, strict=True)}
        if cache and new:
            cache.put_many(new)
        answers = {**cached, **new}
        settings: dict[str, Any] = {
            "decoding": part.decoding.model_dump(),
            "backend": backend,
            "chat_template": "base model's",
            "cached_answers": len(items) - len(todo),
        }
        if backend == "server":
            settings.update(
                server_url=self.plan.server_url,
                model=subject.served_name,
                concurrency=part.concurrency,
            )
        else:
            settings.update(self.models.describe(), batch_size=part.batch_size)
        return [answers[ResponseCache.key(i)] for i in items], settings

    def run(self) -> RunResult:
        plan, suite = self.plan, self.plan.suite
        items = plan.items
        started = time.perf_counter()
        subjects: dict[str, SubjectResult] = {}
        answers: dict[str, list[str]] = {}
        conf = suite.confidence
        for role, subject in plan.subjects:
            res = _new_subject(role, subject, items)
            subjects[role] = res
            if suite.generation.enabled or suite.judge.enabled:
                outs, gen_settings = self.generate(role, subject, items)
                answers[role] = outs
                metrics = suite.generation.metrics if suite.generation.enabled else []
                generation_metrics(
                    res,
                    items,
                    outs,
                    metrics,
                    gen_settings,
                    rouge_stemmer=suite.generation.rouge_stemmer,
                    confidence=conf,
                )
            if suite.perplexity.enabled:
                t0 = time.perf_counter()
                with self.tracker.stage(f"perplexity ({role})", len(items)) as advance:
                    n_win = perplexity.n_windows(self.models, items, suite.perplexity)
                    scale = len(items) / max(n_win, 1)

                    def tick(k: int, s: float = scale, adv: Any = advance) -> None:
                        adv(max(1, round(k * s)))

                    scores = perplexity.score_items(
                        self.models, subject, items, suite.perplexity, progress=tick
                    )
                self.timings[f"perplexity_{role}_s"] = time.perf_counter() - t0
                ppl_settings = {**suite.perplexity.describe(), **self.models.describe()}
                perplexity_metrics(res, items, scores, ppl_settings, conf)
            if suite.forgetting.enabled:
                with self.tracker.stage(
                    f"forgetting ({role})", forgetting.count(suite.forgetting.data)
                ) as advance:
                    forgetting.run(self.models, subject, res, suite.forgetting.data, advance, conf)
            if suite.lmeval.enabled:
                from services.evaluator import lmeval_runner

                with self.tracker.stage(f"lm-eval ({role})", len(suite.lmeval.tasks)) as advance:
                    lmeval_runner.run_tasks(plan, subject, res, advance)
        result = RunResult(
            run_id=plan.run_id,
            candidate=subjects["candidate"],
            baseline=subjects.get("baseline"),
            data=plan.data.describe() | {"n_used": len(items)},
            suite=suite.model_dump(mode="json", exclude={"judge": {"api_key"}}),
            loss_curve=loss_curve(plan.candidate.manifest),
            versions={
                p: version(p)
                for p in ("transformers", "peft", "torch", "lm_eval", "rouge-score", "sacrebleu")
            },
        )
        if suite.judge.enabled:
            self._judge(result, items, answers)
        if suite.parity.enabled:
            from services.evaluator import parity

            with self.tracker.stage("parity", suite.parity.items) as advance:
                parity.run(self.models, plan, result.candidate, items, advance)
        self.timings["total_s"] = time.perf_counter() - started
        result.timings = dict(self.timings)
        return result

    def _judge(
        self, result: RunResult, items: list[EvalItem], answers: dict[str, list[str]]
    ) -> None:
        part, plan = self.plan.suite.judge, self.plan
        endpoint = judge.JudgeEndpoint(
            url=plan.judge_url,
            model=plan.judge_model,
            api_key=plan.judge_api_key or None,
            concurrency=part.concurrency,
            max_tokens=part.max_tokens,
        )
        n = min(len(items), part.max_items or len(items))
        sub = items[:n]
        settings = {
            "judge_model": endpoint.model,
            "endpoint": endpoint.url,
            "prompt_sha256": judge.prompt_sha256(),
            "temperature": 0.0,
        }
        conf = plan.suite.confidence
        t0 = time.perf_counter()
        total = 2 * n * len(part.modes) + 2 * part.anchors
        with self.tracker.stage("judge", total) as advance:
            outcomes: list[judge.PairOutcome] = []
            if "pairwise" in part.modes and result.baseline is not None:
                outcomes = judge.judge_pairs(
                    endpoint, sub, answers["candidate"][:n], answers["baseline"][:n], advance
                )
                result.candidate.add_metric(
                    catalogue.spec("judge.win_rate"),
                    {i.item_id: o.candidate_score for i, o in zip(sub, outcomes, strict=True)},
                    {
                        **settings,
                        "prompt_version": judge.PAIRWISE_VERSION,
                        "rule": "both orders; disagreement = tie (0.5)",
                    },
                    confidence=conf,
                )
                for i, o in zip(sub, outcomes, strict=True):
                    result.candidate.item_map()[i.item_id].extra["judge_pair"] = [o.first, o.second]
            if "rubric" in part.modes:
                for subject in result.subjects():
                    scores = judge.judge_rubric(endpoint, sub, answers[subject.role][:n], advance)
                    subject.add_metric(
                        catalogue.spec("judge.score"),
                        {i.item_id: s for i, s in zip(sub, scores, strict=True)},
                        {**settings, "prompt_version": judge.RUBRIC_VERSION, "scale": "1-10"},
                        confidence=conf,
                    )
            anchors = judge.anchor_pairs(items, part.anchors)
            anchor_result = judge.judge_anchors(endpoint, anchors, advance) if anchors else None
        self.timings["judge_s"] = time.perf_counter() - t0
        rel = judge.reliability(endpoint, outcomes, anchor_result)
        result.judge = rel
        for name, value, count in (
            ("judge.flip_rate", rel.flip_rate, rel.pairs),
            ("judge.anchor_accuracy", rel.anchor_accuracy, 2 * rel.anchors),
        ):
            spec = catalogue.spec(name)
            if value is None:
                result.candidate.add_error(spec, "not measured (no pairs or anchors)", settings)
                continue
            result.candidate.metrics[name] = result.candidate.metrics.get(name) or _scalar(
                spec, value, count, settings
            )


def _scalar(spec: Any, value: float, n: int, settings: dict[str, Any]) -> Any:
    from services.evaluator.results import MetricResult

    return MetricResult(
        name=spec.name,
        value=value if math.isfinite(value) else None,
        higher_is_better=spec.higher_is_better,
        kind=spec.kind,
        statistic=spec.statistic,
        paired=spec.paired,
        n=n,
        settings=settings,
        error=None if math.isfinite(value) else "NaN",
    )


def dump(result: RunResult) -> str:
    return json.dumps(result.model_dump(mode="json"), indent=1)
