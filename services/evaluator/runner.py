"""Run a suite on a candidate and its baseline and collect every metric with per-item records.

The runner touches no database: it takes resolved subjects and loaded data (a :class:`RunPlan`,
``plan.py``) and returns a :class:`RunResult`. Storing, gating and promotion happen in
``service.py``, after the whole run succeeded, so a failure half-way leaves nothing behind but the
failed run's error. Stage sizes come from ``stages.py``, metric dispatch from ``scoring.py``.
"""

from __future__ import annotations

import json
import logging
import time
from importlib.metadata import version
from typing import Any

from services.evaluator import fewshot, forgetting, judge, perplexity
from services.evaluator.data import EvalItem
from services.evaluator.generation import ResponseCache, generate_local, generate_server
from services.evaluator.lineage import loss_curve
from services.evaluator.local_model import LocalModels
from services.evaluator.metrics import catalogue

# Re-exported: other modules and tests import these names from ``runner``.
from services.evaluator.plan import RunPlan as RunPlan
from services.evaluator.plan import preflight as preflight
from services.evaluator.plan import validate_plan as validate_plan
from services.evaluator.results import RunResult, SubjectResult
from services.evaluator.scoring import generation_metrics as generation_metrics
from services.evaluator.scoring import new_subject, scalar_metric
from services.evaluator.scoring import perplexity_metrics as perplexity_metrics
from services.evaluator.stages import Tracker as Tracker
from services.evaluator.stages import components_run, stage_label, stage_units
from services.evaluator.stages import stages as stages
from services.evaluator.subjects import Subject

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, plan: RunPlan, tracker: Tracker | None = None) -> None:
        if not plan.complete:
            raise ValueError("this plan was prepared to validate a request; prepare it to run")
        self.plan = plan
        self.tracker = tracker or Tracker(stages(plan), run_id=plan.run_id)
        self._models: LocalModels | None = None
        self._training_pii: Any = None  # pii_leak.TrainingPii, read once for both subjects
        self._reward_scorer: Any = None  # reward.Scorer, its model loaded once for both subjects
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
        label, units = stage_label("generation", role), stage_units(self.plan, "generation")
        with self.tracker.stage(label, units) as advance:
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
            settings.update(self.models.describe(subject), batch_size=part.batch_size)
        return [answers[ResponseCache.key(i)] for i in items], settings

    def run(self) -> RunResult:
        plan, suite = self.plan, self.plan.suite
        items = plan.items
        started = time.perf_counter()
        subjects: dict[str, SubjectResult] = {}
        answers: dict[str, list[str]] = {}
        conf = suite.confidence
        run = components_run(suite)
        for role, subject in plan.subjects:
            res = new_subject(role, subject, items)
            subjects[role] = res
            asked = fewshot.prompted(subject, items)  # a few-shot base sees its examples first
            if "generation" in run:
                outs, gen_settings = self.generate(role, subject, asked)
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
            if "pii" in run:
                self._pii(role, res, items, answers[role])
            if "reward" in run:
                self._reward(role, res, items, answers[role])
            if "perplexity" in run:
                t0 = time.perf_counter()
                label, units = stage_label("perplexity", role), stage_units(plan, "perplexity")
                with self.tracker.stage(label, units) as advance:
                    n_win = perplexity.n_windows(self.models, asked, suite.perplexity)
                    scale = units / max(n_win, 1)

                    def tick(k: int, s: float = scale, adv: Any = advance) -> None:
                        adv(max(1, round(k * s)))

                    scores = perplexity.score_items(
                        self.models, subject, asked, suite.perplexity, progress=tick
                    )
                self.timings[f"perplexity_{role}_s"] = time.perf_counter() - t0
                ppl_settings = {**suite.perplexity.describe(), **self.models.describe(subject)}
                perplexity_metrics(res, items, scores, ppl_settings, conf)
            if "forgetting" in run:
                label, units = stage_label("forgetting", role), stage_units(plan, "forgetting")
                with self.tracker.stage(label, units) as advance:
                    forgetting.run(self.models, subject, res, suite.forgetting.data, advance, conf)
            if "lmeval" in run:
                from services.evaluator import lmeval_runner

                label, units = stage_label("lmeval", role), stage_units(plan, "lmeval")
                with self.tracker.stage(label, units) as advance:
                    lmeval_runner.run_tasks(plan, subject, res, advance)
        result = RunResult(
            run_id=plan.run_id,
            candidate=subjects["candidate"],
            baseline=subjects.get("baseline"),
            reference=self._base_reference() if "forgetting" in run else None,
            data=plan.data.describe() | {"n_used": len(items)},
            suite=suite.model_dump(mode="json", exclude={"judge": {"api_key"}}),
            loss_curve=loss_curve(plan.candidate.manifest),
            versions={
                p: version(p)
                for p in ("transformers", "peft", "torch", "lm_eval", "rouge-score", "sacrebleu")
            },
        )
        if "judge" in run:
            self._judge(result, items, answers)
        if "parity" in run:
            from services.evaluator import parity

            with self.tracker.stage(stage_label("parity"), stage_units(plan, "parity")) as advance:
                parity.run(self.models, plan, result.candidate, items, advance)
        if "contamination" in run:
            from services.evaluator import contamination

            part = suite.contamination
            label, units = stage_label("contamination"), stage_units(plan, "contamination")
            with self.tracker.stage(label, units) as advance:
                result.contamination = contamination.run(
                    result.candidate,
                    items,
                    plan.training,
                    n=part.ngram,
                    threshold=part.threshold,
                    confidence=conf,
                    progress=advance,
                )
            self.timings["contamination_s"] = result.contamination.seconds
        self.timings["total_s"] = time.perf_counter() - started
        result.timings = dict(self.timings)
        return result

    def _base_reference(self) -> SubjectResult | None:
        """The bare base model's forgetting scores: forgetting is gated against the candidate's
        base whatever the baseline (``compare_with="base"``). None when a subject is that model:
        the gate reuses its scores rather than scoring the base twice."""
        plan, base = self.plan, self.plan.candidate.base
        if any(s.is_base and s.base.name == base.name for _role, s in plan.subjects):
            return None
        subject = Subject(label=base.name, base=base, requested="base")
        res = new_subject("base", subject, [])
        label, units = stage_label("forgetting", "base"), stage_units(plan, "forgetting")
        with self.tracker.stage(label, units) as advance:
            part, conf = plan.suite.forgetting, plan.suite.confidence
            forgetting.run(self.models, subject, res, part.data, advance, conf)
        return res

    def _pii(self, role: str, res: SubjectResult, items: list[EvalItem], outs: list[str]) -> None:
        from services.evaluator import pii_leak

        part = self.plan.suite.pii
        if self._training_pii is None:
            self._training_pii = pii_leak.training_pii(self.plan.training_files, part.kinds)
        with self.tracker.stage(stage_label("pii", role), stage_units(self.plan, "pii")) as adv:
            pii_leak.score(res, items, outs, self._training_pii, part, self.plan.suite.confidence)
            adv(len(items))

    def _reward(
        self, role: str, res: SubjectResult, items: list[EvalItem], outs: list[str]
    ) -> None:
        from services.evaluator import reward

        plan = self.plan
        assert plan.reward_model is not None  # prepare resolves it whenever the part is on
        if self._reward_scorer is None:
            self._reward_scorer = reward.Scorer(
                plan.reward_model, plan.suite.reward, plan.suite.dtype
            )
        t0 = time.perf_counter()
        with self.tracker.stage(stage_label("reward", role), stage_units(plan, "reward")) as adv:
            reward.score(res, items, outs, self._reward_scorer, plan.suite.confidence)
            adv(len(items))
        self.timings[f"reward_{role}_s"] = time.perf_counter() - t0

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
        with self.tracker.stage(stage_label("judge"), stage_units(plan, "judge")) as advance:
            outcomes: list[judge.PairOutcome] = []
            rubric_scores: list[float | None] = []
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
                    rubric_scores += scores
                    subject.add_metric(
                        catalogue.spec("judge.score"),
                        {i.item_id: s for i, s in zip(sub, scores, strict=True)},
                        {
                            **settings,
                            "prompt_version": judge.RUBRIC_VERSION,
                            "scale": "1-10",
                            # Items whose reply held no rating are left out of n; say how many.
                            "parse_failures": sum(s is None for s in scores),
                        },
                        confidence=conf,
                    )
            anchors = judge.anchor_pairs(items, part.anchors)
            anchor_result = judge.judge_anchors(endpoint, anchors, advance) if anchors else None
        self.timings["judge_s"] = time.perf_counter() - t0
        rel = judge.reliability(endpoint, outcomes, anchor_result, rubric_scores)
        result.judge = rel
        for name, value, count in (
            ("judge.flip_rate", rel.flip_rate, rel.pairs),
            ("judge.anchor_accuracy", rel.anchor_accuracy, 2 * rel.anchors),
        ):
            spec = catalogue.spec(name)
            if value is None:
                result.candidate.add_error(spec, "not measured (no pairs or anchors)", settings)
                continue
            result.candidate.metrics[name] = result.candidate.metrics.get(name) or scalar_metric(
                spec, value, count, settings
            )


def dump(result: RunResult) -> str:
    return json.dumps(result.model_dump(mode="json"), indent=1)
