"""Gate policies: one YAML per adapter or family, validated before anything runs.

```yaml
version: 1
confidence: 0.95          # two-sided confidence of the paired intervals
min_items: 20             # fewer items behind any line (floors too) -> inconclusive
judge: {max_flip_rate: 0.2, min_anchor_accuracy: 0.8, max_parse_failure_rate: 0.1}
metrics:
  exact_match: {min: 0.6, max_regression: 0.02}    # floor, and non-inferiority vs the baseline
  perplexity: {max: 30, max_regression: 0.5}       # lower is better: may rise by at most 0.5
  json_valid: {min: 0.95, required: true}          # required (default): missing or NaN fails
  rougeL: {min_improvement: 0.0}                   # must beat the baseline (superiority)
  contamination.rate: {max: 0}                     # no evaluation item in the training data
```

Margins are in the metric's own units and always mean "worse by": for lower-is-better metrics the
gate flips the sign itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from services.evaluator.metrics import catalogue
from shared.errors import NotFoundError, ValidationError


class MetricRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: float | None = Field(default=None, description="candidate value must be >= min")
    max: float | None = Field(default=None, description="candidate value must be <= max")
    max_regression: float | None = Field(
        default=None, ge=0, description="non-inferiority margin vs the baseline, metric units"
    )
    min_improvement: float | None = Field(
        default=None, description="superiority: must beat the baseline by more than this"
    )
    required: bool = Field(default=True, description="missing, NaN or errored metric fails")
    confidence: float | None = Field(default=None, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _something_to_check(self) -> MetricRule:
        if (
            all(v is None for v in (self.min, self.max, self.max_regression, self.min_improvement))
            and not self.required
        ):
            raise ValueError("a rule needs min, max, max_regression, min_improvement or required")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    @property
    def compares(self) -> bool:
        return self.max_regression is not None or self.min_improvement is not None


class JudgeLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_flip_rate: float = Field(default=0.2, ge=0, le=1)
    min_anchor_accuracy: float = Field(default=0.8, ge=0, le=1)
    # Share of judge replies with no parseable rating or verdict: past it, what was parsed is a
    # selected minority (unparsed verdicts became ties, unparsed ratings left judge.score's n).
    max_parse_failure_rate: float = Field(default=0.1, ge=0, le=1)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    name: str = ""
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    power: float = Field(default=0.8, gt=0.5, lt=1.0)
    min_items: int = Field(
        default=20, ge=1, description="fewer items behind any line (floors too): inconclusive"
    )
    bootstrap_resamples: int = Field(default=10_000, ge=200)
    judge: JudgeLimits = Field(default_factory=JudgeLimits)
    suite: str | dict[str, Any] | None = Field(
        default=None, description="suite to run for `gate run`; default: derived from metrics"
    )
    metrics: dict[str, MetricRule]

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: dict[str, MetricRule]) -> dict[str, MetricRule]:
        if not value:
            raise ValueError("the policy has no metric lines")
        for name, rule in value.items():
            if not catalogue.is_known(name):
                raise ValueError(
                    f"unknown metric {name!r}; known metrics: {', '.join(catalogue.known_names())}"
                )
            spec = catalogue.lookup(name)
            if spec is not None and not spec.paired and rule.compares:
                raise ValueError(
                    f"{name} is not compared item by item with a baseline; use min/max, not "
                    "max_regression/min_improvement"
                )
        return value

    def sha256(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def components(self) -> set[str]:
        """Which parts of the evaluator must run to produce every metric the policy names."""
        return {catalogue.component_of(name) for name in self.metrics}


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (a pydantic error location), best effort."""
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == str(key):
                line = k.start_mark.line + 1
                node = v
                break
        else:
            break
    return line


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source} line {mark.line + 1}" if mark is not None else source
        raise ValidationError(f"{where}: not valid YAML ({exc})", param="policy") from exc
    if not isinstance(data, dict):
        raise ValidationError(
            f"{source}: a policy is a YAML mapping with `metrics:`", param="policy"
        )
    details: list[str] = []
    metrics = data.get("metrics")
    if isinstance(metrics, dict):
        for name in metrics:
            if not catalogue.is_known(str(name)):
                line = _line_of(text, ("metrics", name))
                where = f"{source} line {line}" if line else source
                details.append(
                    f"{where}: metrics.{name}: unknown metric {name!r}; known metrics: "
                    + ", ".join(catalogue.known_names())
                )
    if details:
        raise ValidationError(f"invalid gate policy {source}", param="policy", details=details)
    try:
        return Policy.model_validate(data)
    except PydanticValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_of(text, loc)
            where = f"{source} line {line}" if line else source
            field = ".".join(str(p) for p in loc) or "policy"
            details.append(f"{where}: {field}: {err['msg'].removeprefix('Value error, ')}")
        raise ValidationError(
            f"invalid gate policy {source}", param="policy", details=details
        ) from exc


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"policy file {p} does not exist", param="policy")
    return parse_policy(p.read_text(), str(p))
