"""Declarative graders for the ``reinforcement`` method, in OpenAI's shape: no user code runs.

A grader scores one sampled completion for one data row with a number in [0, 1]:

- ``string_check``: ``input`` compared with ``reference`` by ``operation`` (``eq``, ``ne``;
  ``like``: input contains reference; ``ilike``: the same ignoring case); 1 or 0.
- ``text_similarity``: ``fuzzy_match`` (difflib's ratio), ``bleu`` (sacrebleu's sentence BLEU / 100),
  ``rouge_1`` or ``rouge_l`` (rouge-score's F-measure).
- ``json_match`` (ours): the input parsed as JSON (a Markdown code fence around it is stripped) and
  compared with the reference JSON: the share of the reference's top-level keys whose values are
  equal (a non-object reference: 1 when equal); 0 when the input does not parse.
- ``multi``: named sub-graders, combined by ``weights`` (normalised) or as an equal-weight mean.
- ``score_model``: a registered reward model's score of prompt + completion, through a sigmoid.

Templates hold text plus two kinds of placeholder, substituted and never evaluated:
``{{sample.output_text}}`` (the completion) and ``{{item.<field>}}`` (a top-level field of the data
row; a non-string value is written as JSON). Anything else between ``{{ }}`` is refused.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.errors import ValidationError

MAX_DEPTH = 3  # multi graders nested at most this deep
MAX_TEMPLATE = 4000

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_ALLOWED = re.compile(r"\s*(sample\.output_text|item\.([A-Za-z_][A-Za-z0-9_]{0,63}))\s*")
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def template_fields(template: str) -> set[str]:
    """The ``item`` fields a template names; ValueError for any placeholder not allowed."""
    if len(template) > MAX_TEMPLATE:
        raise ValueError(f"a template may hold at most {MAX_TEMPLATE} characters")
    fields: set[str] = set()
    for match in _PLACEHOLDER.finditer(template):
        allowed = _ALLOWED.fullmatch(match.group(1))
        if allowed is None:
            raise ValueError(
                f"template placeholder {match.group(0)!r} is not allowed: use "
                "{{sample.output_text}} or {{item.<field>}} (no expressions)"
            )
        if allowed.group(2):
            fields.add(allowed.group(2))
    return fields


def render(template: str, output_text: str, item: Mapping[str, Any]) -> str:
    """The template with its placeholders replaced (plain substitution, nothing evaluated)."""

    def value(match: re.Match[str]) -> str:
        allowed = _ALLOWED.fullmatch(match.group(1))
        if allowed is None:  # refused when the grader was validated; kept literal here
            return match.group(0)
        if allowed.group(2) is None:
            return output_text
        got = item[allowed.group(2)]
        return got if isinstance(got, str) else json.dumps(got, ensure_ascii=False, sort_keys=True)

    return _PLACEHOLDER.sub(value, template)


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="grader", min_length=1, max_length=64)

    def item_fields(self) -> set[str]:
        raise NotImplementedError

    def score(self, output_text: str, item: Mapping[str, Any]) -> float:
        raise NotImplementedError


class _Templated(_Grader):
    input: str = Field(default="{{sample.output_text}}", description="Template of what is graded.")
    reference: str = Field(description="Template of what it is compared with.")

    @field_validator("input", "reference")
    @classmethod
    def _template(cls, value: str) -> str:
        template_fields(value)
        return value

    def item_fields(self) -> set[str]:
        return template_fields(self.input) | template_fields(self.reference)

    def _texts(self, output_text: str, item: Mapping[str, Any]) -> tuple[str, str]:
        return render(self.input, output_text, item), render(self.reference, output_text, item)


class StringCheckGrader(_Templated):
    type: Literal["string_check"]
    operation: Literal["eq", "ne", "like", "ilike"]

    def score(self, output_text: str, item: Mapping[str, Any]) -> float:
        got, ref = self._texts(output_text, item)
        if self.operation == "eq":
            return float(got == ref)
        if self.operation == "ne":
            return float(got != ref)
        if self.operation == "like":
            return float(ref in got)
        return float(ref.lower() in got.lower())


@cache
def _rouge(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


class TextSimilarityGrader(_Templated):
    type: Literal["text_similarity"]
    evaluation_metric: Literal["fuzzy_match", "bleu", "rouge_1", "rouge_l"]

    def score(self, output_text: str, item: Mapping[str, Any]) -> float:
        got, ref = self._texts(output_text, item)
        metric = self.evaluation_metric
        if metric == "fuzzy_match":
            return difflib.SequenceMatcher(None, got, ref, autojunk=False).ratio()
        if metric == "bleu":
            import sacrebleu

            return float(sacrebleu.sentence_bleu(got, [ref]).score) / 100.0
        kind = "rouge1" if metric == "rouge_1" else "rougeL"
        return float(_rouge(kind).score(ref, got)[kind].fmeasure)


def parse_json_output(text: str) -> Any:
    """The JSON in ``text`` (a Markdown code fence around it stripped); ValueError if none."""
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text)


class JsonMatchGrader(_Templated):
    type: Literal["json_match"]

    def score(self, output_text: str, item: Mapping[str, Any]) -> float:
        got_text, ref_text = self._texts(output_text, item)
        try:
            got = parse_json_output(got_text)
        except ValueError:
            return 0.0
        try:
            ref = json.loads(ref_text)
        except ValueError:
            ref = ref_text  # a plain-text reference is compared as a JSON string
        if not isinstance(ref, dict):
            return float(got == ref)
        if not ref:
            return float(got == {})
        if not isinstance(got, dict):
            return 0.0
        return sum(1 for k, v in ref.items() if k in got and got[k] == v) / len(ref)


class ScoreModelGrader(_Grader):
    """A registered reward model (a version trained with ``method: reward``) scores the prompt
    plus the completion; its scalar is mapped to [0, 1] with a sigmoid, the Bradley-Terry reading
    of a reward model's score (the chance it prefers this answer to one it scores 0). It scores
    whole batches with its model (``recipes/grpo.py``), so it is used alone, not inside ``multi``.
    The job checks at submit that the version is a reward model on the job's base model, and
    records the version it resolved to (an alias moves)."""

    type: Literal["score_model"]
    model: str = Field(
        min_length=1,
        max_length=255,
        description="Reward model: version id (name@vN) or alias (name:alias).",
    )

    def item_fields(self) -> set[str]:
        return set()

    def score(self, output_text: str, item: Mapping[str, Any]) -> float:
        raise TypeError("a score_model grader scores batches with its reward model (recipes/grpo)")


def sigmoid(x: float) -> float:
    """The reward model's score on [0, 1]; stable for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class MultiGrader(_Grader):
    type: Literal["multi"]
    graders: dict[str, Grader] = Field(min_length=1, max_length=16)
    weights: dict[str, float] | None = Field(
        default=None, description="Weight per sub-grader (normalised); default: equal weights."
    )

    @model_validator(mode="after")
    def _weights_match(self) -> MultiGrader:
        if self.weights is not None:
            if set(self.weights) != set(self.graders):
                raise ValueError(
                    f"weights name {sorted(self.weights)} but graders are {sorted(self.graders)}"
                )
            if any(not w >= 0 for w in self.weights.values()) or not sum(self.weights.values()):
                raise ValueError("weights must be non-negative and not all zero")
        if any(isinstance(g, ScoreModelGrader) for g in self.graders.values()):
            raise ValueError("a score_model grader is used alone, not inside multi")
        if _depth(self) > MAX_DEPTH:
            raise ValueError(f"multi graders may be nested at most {MAX_DEPTH} deep")
        return self

    def item_fields(self) -> set[str]:
        return set().union(*(g.item_fields() for g in self.graders.values()))

    def score(self, output_text: str, item: Mapping[str, Any]) -> float:
        weights = self.weights or dict.fromkeys(self.graders, 1.0)
        total = sum(weights.values())
        return sum(
            weights[name] * g.score(output_text, item) for name, g in self.graders.items()
        ) / float(total)


def _depth(grader: Any) -> int:
    if isinstance(grader, MultiGrader):
        return 1 + max(_depth(g) for g in grader.graders.values())
    return 0


Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | JsonMatchGrader | MultiGrader | ScoreModelGrader,
    Field(discriminator="type"),
]
MultiGrader.model_rebuild()


def grade(grader: Any, output_text: str, item: Mapping[str, Any]) -> float:
    """The grader's score of one completion for one data row, clamped to [0, 1]."""
    value = float(grader.score(output_text, item))
    return min(1.0, max(0.0, value)) if value == value else 0.0


def check_item_fields(
    grader: Any, rows: Iterable[tuple[str, Mapping[str, Any]]], *, param: str = "training_file"
) -> None:
    """Every ``{{item.x}}`` the grader names must be a field of every row (``rows``: where each
    row is, e.g. ``train.jsonl line 3``, and its fields); one error lists every row that lacks one."""
    wanted = sorted(grader.item_fields())
    problems = [
        f"{where}: missing field `{name}` (the grader uses {{{{item.{name}}}}})"
        for where, item in rows
        for name in wanted
        if name not in item
    ]
    if problems:
        raise ValidationError(
            f"{len(problems)} row(s) lack a field the grader needs: {problems[0]}",
            param=param,
            code="missing_grader_field",
            details=problems[:20],
        )
