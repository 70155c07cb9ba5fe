"""Suites: which parts of the evaluator run, with the settings that define their metrics.

Built-in suites are YAML files in ``suites/``; a policy can also name what it needs and
:func:`suite_for_policy` turns on exactly the parts that produce its metrics.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from services.evaluator import contamination
from services.evaluator.generation import DecodingSettings
from services.evaluator.metrics import catalogue
from services.evaluator.perplexity import PerplexitySettings
from shared.config_files import validation_details
from shared.errors import NotFoundError, ValidationError
from shared.pii import Kind as PiiKind

SUITES_DIR = Path(__file__).with_name("suites")
TASKS_DIR = Path(__file__).with_name("tasks")
GENERATION_METRICS = catalogue.metrics_of("generation")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False


class GenerationPart(_Part):
    metrics: list[str] = Field(default_factory=lambda: list(GENERATION_METRICS))
    decoding: DecodingSettings = Field(default_factory=DecodingSettings)
    backend: Literal["auto", "local", "server"] = "auto"
    batch_size: int = Field(default=8, ge=1)
    concurrency: int = Field(default=16, ge=1)
    rouge_stemmer: bool = False
    cache: bool = True


class PerplexityPart(_Part, PerplexitySettings):
    pass


class JudgePart(_Part):
    modes: list[Literal["rubric", "pairwise"]] = Field(default=["pairwise"])
    endpoint: str | None = Field(
        default=None,
        description="name of an endpoint in the evaluator's settings (LORAPLEX_ENDPOINTS); "
        "default: 'judge' if configured, else 'server'",
    )
    model: str | None = Field(default=None, description="judge model name on that endpoint")
    api_key: str | None = Field(default=None, description="refused: keys come from settings only")
    anchors: int = Field(default=8, ge=0)
    max_items: int | None = Field(default=None, ge=1)
    concurrency: int = Field(default=8, ge=1)
    max_tokens: int = Field(default=256, ge=8)

    @field_validator("endpoint")
    @classmethod
    def _a_name_not_a_url(cls, value: str | None) -> str | None:
        # A URL here would send the judge key wherever a suite (or a request) points.
        if value is not None and ("://" in value or "/" in value or ":" in value):
            raise ValueError(
                f"{value!r} is a URL; name an endpoint configured in the evaluator's settings "
                "(LORAPLEX_ENDPOINTS, or 'judge' / 'server' from LORAPLEX_JUDGE_URL / "
                "LORAPLEX_SERVER_URL)"
            )
        return value

    @field_validator("api_key")
    @classmethod
    def _no_key(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "a suite cannot carry a key; keys come only from the evaluator's settings "
                "(LORAPLEX_ENDPOINTS), with the endpoint they belong to"
            )
        return value


class LmevalPart(_Part):
    tasks: list[str] = Field(default_factory=lambda: ["loraplex_extract_gen"])
    backend: Literal["hf", "local-completions"] = "hf"
    batch_size: int = Field(default=8, ge=1)
    limit: int | None = Field(default=None, ge=1)
    num_concurrent: int = Field(default=4, ge=1)


class ForgettingPart(_Part):
    data: str = Field(default=str(TASKS_DIR / "general_mc.jsonl"))


class ParityPart(_Part):
    items: int = Field(default=8, ge=1)
    max_new_tokens: int = Field(default=24, ge=1)
    logprob_tolerance: float = Field(default=0.05, gt=0)
    top_logprobs: int = Field(default=1, ge=0)


class PiiPart(_Part):
    kinds: list[PiiKind] | None = Field(
        default=None, description="PII kinds that count as a leak; default: all"
    )
    # Bounded: a suite may come with a request, and each entry is compared with every leak.
    ignore: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=100,
        description="training PII containing one of these (case-insensitive) is no leak, e.g. "
        "the company's own support address",
    )


class RewardPart(_Part):
    model: str | None = Field(
        default=None,
        max_length=255,
        description="registered reward model (name@vN or name:alias, trained with method "
        "'reward') that scores each answer",
    )
    max_length: int = Field(
        default=2048, ge=16, description="longer prompt + answer items are left out, not cut"
    )
    batch_size: int = Field(default=8, ge=1)


class ContaminationPart(_Part):
    # On by default: it runs whenever the candidate's lineage names training data (prepare.py),
    # because an evaluation set nobody checked can hold memorised items.
    enabled: bool = True
    ngram: int = Field(
        default=contamination.NGRAM,
        ge=1,
        description="word n-gram length of the near-duplicate test",
    )
    threshold: float = Field(
        default=contamination.THRESHOLD,
        gt=0,
        le=1,
        description="share of an item's words in shared n-grams to flag it",
    )


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    dtype: Literal["float32", "bfloat16"] = "float32"
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    limit: int | None = Field(default=None, ge=1, description="use only the first N items")
    generation: GenerationPart = Field(default_factory=GenerationPart)
    perplexity: PerplexityPart = Field(default_factory=PerplexityPart)
    judge: JudgePart = Field(default_factory=JudgePart)
    lmeval: LmevalPart = Field(default_factory=LmevalPart)
    forgetting: ForgettingPart = Field(default_factory=ForgettingPart)
    parity: ParityPart = Field(default_factory=ParityPart)
    pii: PiiPart = Field(default_factory=PiiPart)
    reward: RewardPart = Field(default_factory=RewardPart)
    contamination: ContaminationPart = Field(default_factory=ContaminationPart)

    def needs_local_model(self, server: bool) -> bool:
        gen_local = self.generation.enabled and (
            self.generation.backend == "local" or (self.generation.backend == "auto" and not server)
        )
        return (
            gen_local or self.perplexity.enabled or self.forgetting.enabled or self.parity.enabled
        )


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def parse_suite(data: Any, source: str) -> Suite:
    try:
        return Suite.model_validate(data)
    except PydanticValidationError as exc:
        details = validation_details(exc)
        raise ValidationError(f"invalid suite {source}", param="suite", details=details) from exc


def load_suite(spec: str | dict[str, Any] | Suite | None) -> Suite:
    """A built-in suite name, a YAML file path, a dict, or a Suite."""
    if isinstance(spec, Suite):
        return spec
    if spec is None:
        spec = "default"
    if isinstance(spec, dict):
        return parse_suite(spec, "<inline>")
    path = Path(spec)
    if not path.suffix:
        path = SUITES_DIR / f"{spec}.yaml"
        # A built-in name is a bare word: "../../x" must not reach a YAML file outside suites/.
        if not re.fullmatch(r"[A-Za-z0-9_-]+", spec) or not path.is_file():
            raise NotFoundError(
                f"unknown suite {spec!r}; built-in suites: {', '.join(builtin_suites())}",
                param="suite",
            )
    if not path.is_file():
        raise NotFoundError(f"suite file {path} does not exist", param="suite")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    return parse_suite(data, str(path))


def suite_for_policy(policy_metrics: list[str], base: Suite | None = None) -> Suite:
    """Turn on every part that produces a metric the policy names."""
    suite = (base or Suite(name="policy")).model_copy(deep=True)
    tasks: list[str] = []
    modes = set(suite.judge.modes)
    for name in policy_metrics:
        component = catalogue.component_of(name)
        getattr(suite, component).enabled = True
        spec = catalogue.lookup(name)
        if spec is None:  # a harness metric: lmeval.<task>.<metric> names its task
            match = catalogue.LMEVAL_RE.match(name)
            if match and match["task"] not in tasks:
                tasks.append(match["task"])
        elif spec.judge_mode is not None:
            modes.add(spec.judge_mode)
    if tasks:
        suite.lmeval.tasks = sorted(set(suite.lmeval.tasks) | set(tasks)) if base else tasks
    if suite.judge.enabled:
        suite.judge.modes = sorted(modes)
    return suite


def enabled_components(suite: Suite) -> set[str]:
    """The registered components this suite runs."""
    return {name for name in catalogue.COMPONENTS if getattr(suite, name).enabled}
