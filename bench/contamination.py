"""Contamination check cost: 10k training rows x 1k evaluation items (synthetic, seeded).

Times what an evaluation does when the candidate has lineage: read and normalise the training rows,
build the index (exact hashes + 8-gram postings), check every item. The baseline, in the same run,
is the scan the index avoids: every item compared with every training row (its 8-grams against the
row's), measured on a sample of items and scaled to all of them; on that sample both must flag the
same items. The data has what makes an index slow or wrong: a shared system prompt, a sentence
template every row starts with (8-grams held by all rows), Zipf-distributed words, and planted
exact copies and one-word edits among the items.

    python bench/contamination.py [--rows 10000] [--items 1000] [--sample 10] [--seed 0] [--context TEXT]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._report import record  # noqa: E402
from services.evaluator import contamination  # noqa: E402
from services.evaluator.data import EvalItem, load_data  # noqa: E402

SYSTEM = "You are a support assistant. Answer in two sentences, politely."
TEMPLATE = "Customer message follows and it should be answered with care:"


def _vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)]


def _text(rng: random.Random, vocab: list[str], weights: list[float], n: int) -> str:
    return " ".join(rng.choices(vocab, weights=weights, k=n)).capitalize() + "."


def _row(rng: random.Random, vocab: list[str], weights: list[float]) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": f"{TEMPLATE} {_text(rng, vocab, weights, rng.randint(15, 45))}",
            },
            {"role": "assistant", "content": _text(rng, vocab, weights, rng.randint(20, 60))},
        ]
    }


def make_data(
    rows: int, items: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    """Training rows, evaluation rows (5% exact copies, 5% one word changed) and the planted ids."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    weights = [1.0 / (k + 1) for k in range(len(vocab))]  # Zipf: a few words everywhere
    train = [_row(rng, vocab, weights) for _ in range(rows)]
    evals: list[dict[str, Any]] = []
    planted: set[str] = set()
    for k in range(items):
        item_id = f"e{k}"
        if k % 20 == 0:
            row = json.loads(json.dumps(rng.choice(train)))
            planted.add(item_id)
        elif k % 20 == 1:
            row = json.loads(json.dumps(rng.choice(train)))
            words = row["messages"][2]["content"].split()
            words[len(words) // 2] = "changedword"
            row["messages"][2]["content"] = " ".join(words)
            planted.add(item_id)
        else:
            row = _row(rng, vocab, weights)
        evals.append({"id": item_id, **row})
    return train, evals, planted


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def brute_force(
    items: list[EvalItem], rows: list[contamination.TrainingRow], n: int, threshold: float
) -> set[str]:
    """Every item against every row, no index: the quadratic scan."""
    row_tokens = [contamination.normalise(r.text) for r in rows]
    row_prompts = [contamination.normalise(r.prompt) for r in rows]
    flagged: set[str] = set()
    for item in items:
        prompt_text, full_text = contamination.item_texts(item)
        tokens, prompt = contamination.normalise(full_text), contamination.normalise(prompt_text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        for toks, rprompt in zip(row_tokens, row_prompts, strict=True):
            if toks == tokens or (prompt and rprompt == prompt):
                flagged.add(item.item_id)
                break
            held = {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}
            covered = [False] * len(tokens)
            for i, g in enumerate(grams):
                if g in held:
                    covered[i : i + n] = [True] * n
            if grams and sum(covered) / len(tokens) >= threshold:
                flagged.add(item.item_id)
                break
    return flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--sample", type=int, default=10, help="items the brute-force scan checks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", default="", help="how the machine was shared, for the notes")
    args = parser.parse_args()
    n, threshold = contamination.NGRAM, contamination.THRESHOLD
    train, evals, planted = make_data(args.rows, args.items, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        train_path = _write(Path(tmp) / "train.jsonl", train)
        items = load_data(_write(Path(tmp) / "eval.jsonl", evals)).items
        t0 = time.perf_counter()
        rows = contamination.load_rows(train_path, "train.jsonl")
        t1 = time.perf_counter()
        index = contamination.Index(rows, n)
        t2 = time.perf_counter()
        values, found, short = contamination.check(items, index, threshold)
        t3 = time.perf_counter()
    flagged = {o.item_id for o in found}
    # The baseline on a sample that holds planted items and clean ones (planted ones stop early).
    sample = [i for i in items if i.item_id in planted][: args.sample // 2]
    sample += [i for i in items if i.item_id not in planted][: args.sample - len(sample)]
    b0 = time.perf_counter()
    brute = brute_force(sample, rows, n, threshold)
    brute_s = time.perf_counter() - b0
    agree = brute == {i.item_id for i in sample if i.item_id in flagged}
    brute_all_s = brute_s / len(sample) * len(items)
    total = t3 - t0
    record(
        "contamination",
        title=f"Contamination check, {args.rows} training rows x {args.items} evaluation items",
        baseline="every item compared with every training row (no index), timed on "
        f"{len(sample)} items in the same run and scaled to {args.items}",
        figures={
            "data": f"synthetic, seed {args.seed}: chat rows with a shared system prompt and a "
            "10-word opening every user turn repeats, 35-105 Zipf-distributed words from a "
            "20k-word vocabulary; 5% of the items copied from training rows, 5% copied with one "
            "word changed",
            "n-gram / threshold": f"{n} words / {threshold:g} of an item's words covered",
            "read training rows (parse JSONL) (s)": round(t1 - t0, 3),
            "build index (normalise, hash 8-grams, sort) (s)": round(t2 - t1, 3),
            "check items (s)": round(t3 - t2, 3),
            "total (s)": round(total, 3),
            "index entries (distinct 8-grams)": index.n_ngrams,
            "items flagged / planted": f"{len(flagged)} / {len(planted)}",
            "planted items missed": len(planted - flagged),
            "clean items flagged": len(flagged - planted),
            "rate": round(sum(values.values()) / len(values), 4),
            "items too short for n-grams": short,
            "brute force on the sample (s)": round(brute_s, 3),
            "brute force, scaled to all items (s)": round(brute_all_s, 1),
            "brute force flags the same sample items": agree,
        },
        ratios={"brute force / indexed check (all items)": round(brute_all_s / total, 1)},
        targets={
            "brute force / indexed check (all items)": "issue 16: seconds for 10k x 1k, not a "
            "quadratic scan"
        },
        notes="The total is what an evaluation adds when its candidate has lineage. When the "
        "evaluation data is the split held out of the training file, that split is built once for "
        "the data and reused for the check; building it is not timed here."
        + (f" {args.context}" if args.context else ""),
    )


if __name__ == "__main__":
    main()
