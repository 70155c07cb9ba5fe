"""The forgetting set: the embedded base model's accuracy on it and the smallest drop it can detect.

Scores ``services/evaluator/tasks/general_mc.jsonl`` with the bare embedded base model exactly as
an evaluation does (``forgetting.run``: log-likelihood of each choice), reports its accuracy per
category, and the minimum detectable difference (``stats.minimum_detectable_difference``) at 95%
confidence and 80% power for that number of items. A paired MDD depends on how often candidate and
base disagree, unknown before a run, so three figures: two independent models of the base's
accuracy (``2 p (1 - p)``, the upper bound), an adapter that changes one answer in ten, and the
floor when none changes. Each gate line prints the MDD measured on its own run.

    python bench/forgetting_set.py [--dtype float32] [--context TEXT]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._report import record  # noqa: E402
from services.evaluator import forgetting, stats  # noqa: E402
from services.evaluator.local_model import LocalModels  # noqa: E402
from services.evaluator.results import SubjectResult  # noqa: E402
from services.evaluator.subjects import Subject  # noqa: E402
from services.evaluator.suite import ForgettingPart  # noqa: E402
from shared.basemodel import prepare_embedded_model  # noqa: E402
from shared.settings import SharedSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--context", default="", help="how the machine was shared, for the notes")
    args = parser.parse_args()
    cache = Path(os.environ.get("LORAPLEX_TEST_CACHE", REPO / ".loraplex" / "test-cache"))
    base = prepare_embedded_model(SharedSettings(data_dir=cache))
    subject = Subject(label=base.name, base=base, requested="base")
    path = ForgettingPart().data
    models = LocalModels(subject, dtype=args.dtype)
    res = SubjectResult(role="candidate", model=subject.label)
    t0, c0 = time.perf_counter(), time.process_time()
    forgetting.run(models, subject, res, path, lambda _k: None, 0.95)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    metric = res.metrics["forgetting.accuracy"]
    n, p = metric.n, float(metric.value or 0.0)
    per: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for item in res.items:
        category = item.item_id.split(":", 1)[1].rsplit("-", 1)[0]
        per[category] += 1
        right[category] += int(item.values["forgetting.accuracy"] == 1.0)
    mdd = stats.minimum_detectable_difference(
        n, sd=math.sqrt(2 * p * (1 - p)), binary=True, confidence=0.95, power=0.8
    )
    # An adapter that changes one answer in ten (either way): sd of the differences sqrt(0.1).
    mdd_10 = stats.minimum_detectable_difference(n, sd=math.sqrt(0.1), confidence=0.95, power=0.8)
    # No disagreement observed: the helper's floor (rule of three on the discordance rate).
    floor = stats.minimum_detectable_difference(
        n, diffs=[0.0] * n, binary=True, confidence=0.95, power=0.8
    )
    record(
        "forgetting_set",
        title=f"Forgetting set: {n} general multiple-choice items, {base.name} ({args.dtype})",
        baseline="chance: 0.25 (4 choices, answer positions balanced)",
        figures={
            "items": n,
            "source": "written for loraplex by services/evaluator/tasks/build_general_mc.py "
            "(templates with computed answers and hand-written fact tables; no external "
            "dataset)",
            "base model accuracy": round(p, 4),
            f"{100 * 0.95:g}% Wilson interval": f"{metric.ci_low:.3f} to {metric.ci_high:.3f}",
            "per category (right / items)": ", ".join(
                f"{c} {right[c]}/{per[c]}" for c in sorted(per)
            ),
            "MDD at 95% confidence, 80% power (independent-errors bound)": round(mdd, 4),
            "MDD, 10% of answers changed": round(mdd_10, 4),
            "MDD, no disagreement observed (floor)": round(floor, 4),
            "scoring time, base model, wall / CPU (s)": f"{seconds:.1f} / {cpu:.1f}",
        },
        ratios={
            "MDD / 0.05 margin (independent errors)": round(mdd / 0.05, 2),
            "MDD / 0.05 margin (10% of answers changed)": round(mdd_10 / 0.05, 2),
        },
        targets={
            "MDD / 0.05 margin (10% of answers changed)": "below 1: a 0.05 non-inferiority "
            "margin against the base is checkable (issue 16)"
        },
        notes="All MDDs at 95% confidence and 80% power, from stats.minimum_detectable_difference "
        "(the helper the gate uses). A paired MDD depends on how often candidate and base "
        "disagree, which only a run knows: two models of this accuracy erring independently is "
        "the upper bound; an adapter that changes one answer in ten gives the middle figure; the "
        "floor is the helper's rule-of-three bound when no answer changes. Each gate line prints "
        "the MDD of its own run. " + args.context,
    )


if __name__ == "__main__":
    main()
