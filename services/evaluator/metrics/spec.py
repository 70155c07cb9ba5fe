"""The shape of a registry entry (component or metric) and the check that an entry is complete.

The entries themselves are in ``catalogue.py``; :func:`check` is what
``tests/evaluator/test_registry.py`` runs over them (and over deliberately broken ones).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from services.evaluator import stats

Kind = Literal["binary", "continuous"]
JudgeMode = Literal["rubric", "pairwise"]
CompareWith = Literal["baseline", "base"]
ItemValue = float | list[float] | None
KINDS: tuple[Kind, ...] = ("binary", "continuous")
JUDGE_MODES: tuple[JudgeMode, ...] = ("rubric", "pairwise")


@dataclass(frozen=True)
class ScoreOptions:
    """The suite settings a per-item scorer or a definition may depend on."""

    rouge_stemmer: bool = False


# A per-item scorer; its input is what the component produced for the item:
# generation ``(output: str, item: EvalItem, options)``, perplexity ``(nll: ItemNLL, options)``.
Scorer = Callable[..., ItemValue]
Definition = Callable[[ScoreOptions], dict[str, Any]]


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # the suite part that runs it: ``Suite.<name>``
    description: str
    module: str  # where its metrics are computed
    needs_prompts: bool = False  # prompt + reference rows, not plain text
    needs_answers: bool = False  # reads the generated answers (generation runs for it)
    per_subject: bool = True  # runs for candidate and baseline, else once per run
    scores_per_item: bool = False  # its metrics carry ``score`` + ``definition`` entries
    suite_selectable: bool = False  # a suite lists which of its metrics to compute
    open_names: bool = False  # its metric names come from the run (lm-eval tasks)
    judged: bool = False  # its values are an LLM judge's verdicts: the gate checks the judge
    stage: str = ""  # progress label of its stage (per subject: "<stage> (<role>)")
    # Work units of its stage, from the suite and the number of items: the one place it is computed.
    units: Callable[[Any, int], int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    component: str
    higher_is_better: bool
    kind: Kind
    statistic: str = "mean"
    # False for metrics that already compare two subjects (win rate) or describe the judge itself.
    paired: bool = True
    description: str = ""
    score: Scorer | None = field(default=None, compare=False)
    definition: Definition | None = field(default=None, compare=False)
    judge_mode: JudgeMode | None = None  # the judge mode that must run to produce it
    # What the gate's comparison lines hold it against: the run's baseline, or the candidate's
    # bare base model whatever the baseline is (forgetting: loss of what the base could do).
    compare_with: CompareWith = "baseline"


LMEVAL_RE = re.compile(r"^lmeval\.(?P<task>[A-Za-z0-9_\-]+)\.(?P<metric>[A-Za-z0-9_\-]+)$")


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def check(metrics: Mapping[str, MetricSpec], components: Mapping[str, ComponentSpec]) -> list[str]:
    """What each entry lacks; empty when every entry has every piece it needs.

    Corpus statistics such as ``bleu`` are registered by ``overlap`` (imported by the catalogue).
    """
    out: list[str] = []
    for key, comp in components.items():
        if key != comp.name or not comp.description:
            out.append(f"component {key}: key, name and description must be set and agree")
        if not comp.stage or not callable(comp.units):
            out.append(f"component {key}: needs a stage label and a units function")
        if not _module_exists(comp.module):
            out.append(f"component {key}: module {comp.module} does not exist")
        if not comp.open_names and not any(s.component == key for s in metrics.values()):
            out.append(f"component {key}: produces no registered metric")
    for key, m in metrics.items():
        where = f"metric {key}"
        if key != m.name or not m.description:
            out.append(f"{where}: key, name and description must be set and agree")
        if LMEVAL_RE.match(key):
            out.append(f"{where}: lmeval.<task>.<metric> names belong to the harness")
        owner = components.get(m.component)
        if owner is None:
            out.append(f"{where}: unknown component {m.component!r}")
            continue
        if m.kind not in KINDS:
            out.append(f"{where}: kind {m.kind!r} is not one of {', '.join(KINDS)}")
        if m.statistic not in stats.STATISTICS:
            out.append(f"{where}: statistic {m.statistic!r} is not in stats.STATISTICS")
        if not isinstance(m.higher_is_better, bool) or not isinstance(m.paired, bool):
            out.append(f"{where}: higher_is_better and paired must be booleans")
        if owner.scores_per_item and not (callable(m.score) and callable(m.definition)):
            out.append(f"{where}: a {owner.name} metric needs a score and a definition")
        if not owner.scores_per_item and (m.score is not None or m.definition is not None):
            out.append(f"{where}: {owner.name} computes its metrics itself; no score here")
        if m.judge_mode is not None and (owner.name != "judge" or m.judge_mode not in JUDGE_MODES):
            out.append(f"{where}: judge_mode {m.judge_mode!r} is for judge metrics only")
        if m.compare_with == "base" and not (m.paired and owner.per_subject):
            out.append(f"{where}: compare_with base needs a paired metric scored per subject")
    return out
