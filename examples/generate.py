"""Generate the example datasets under ``examples/extraction/`` (no network, seeded).

The task is structured extraction: a customer's free-text order message goes in, one JSON object
with a fixed schema comes out. Exact match of the parsed JSON is the metric, so the base model's
score and the trained adapter's score are unambiguous. The held-out test file uses names and cities
that never appear in training, so a high score means the adapter learned to extract, not to recall.

Files written:

- ``sft_train.jsonl``  chat-format supervised examples (with a little HTML noise and one exact
  duplicate, so the data report has something to show)
- ``test.jsonl``       held-out examples: ``{"id", "messages": [system, user], "expected": {...}}``
- ``dpo_train.jsonl``  preference pairs ``{"prompt", "chosen", "rejected"}``: correct JSON versus
  a typical failure (prose, markdown fences, a wrong value, not stopping after the object)
- ``holdout.jsonl``    the release gates' held-out set, shaped like ``test.jsonl`` and drawn the
  same way, large enough that a gate's minimum detectable difference is well below its margin
  (``examples/release/``); generated after the others, so they do not change with its size

Usage: ``python examples/generate.py [--train 320 --test 60 --dpo 160 --holdout 300 --seed 7]``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "extraction"

SYSTEM = "Extract the order as JSON with keys name, item, quantity, color, size, city."
FIRST = [
    "Maria",
    "John",
    "Aisha",
    "Lukas",
    "Sofia",
    "Kenji",
    "Olga",
    "Pedro",
    "Emma",
    "Tariq",
    "Chloe",
    "Mateo",
    "Ingrid",
    "Ravi",
    "Lena",
    "Samuel",
    "Yuki",
    "Fatima",
    "Noah",
    "Clara",
    "Diego",
    "Hannah",
    "Omar",
    "Mila",
    "Victor",
    "Zara",
    "Felix",
    "Amara",
    "Jonas",
    "Leila",
]
LAST = [
    "Lopez",
    "Smith",
    "Khan",
    "Weber",
    "Rossi",
    "Tanaka",
    "Petrova",
    "Silva",
    "Dubois",
    "Haddad",
    "Martin",
    "Garcia",
    "Larsen",
    "Patel",
    "Novak",
    "Cohen",
    "Sato",
    "Bakr",
    "Moreau",
    "Fischer",
    "Ortiz",
    "Schmidt",
    "Nasser",
    "Kowalski",
    "Ivanov",
    "Mendes",
    "Berg",
    "Okafor",
    "Wagner",
    "Costa",
]
CITIES = [
    "Berlin",
    "Madrid",
    "Lyon",
    "Osaka",
    "Toronto",
    "Nairobi",
    "Lisbon",
    "Prague",
    "Dublin",
    "Austin",
    "Seoul",
    "Milan",
    "Oslo",
    "Porto",
    "Denver",
    "Cairo",
    "Quito",
    "Hamburg",
    "Perth",
    "Zurich",
    "Vienna",
    "Boston",
    "Krakow",
    "Lagos",
    "Athens",
    "Bergen",
    "Leeds",
    "Kyoto",
]
# Held out: these never appear in the training files.
TEST_FIRST = ["Ingrid", "Ravi", "Yuki", "Amara", "Felix", "Leila"]
TEST_LAST = ["Novak", "Okafor", "Berg", "Mendes", "Sato"]
TEST_CITIES = ["Kyoto", "Lagos", "Bergen", "Quito", "Leeds", "Perth"]
SIZED = ["t-shirt", "hoodie", "jacket", "sweater", "cap", "dress"]
UNSIZED = ["mug", "backpack", "notebook", "umbrella", "lamp", "towel", "poster"]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "grey", "pink", "orange", "purple"]
SIZES = ["S", "M", "L", "XL"]
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}

SIZED_TEMPLATES = [
    "Hi, this is {name}. I'd like {qty} {color} {items} in size {size}, shipped to {city}.",
    "{name} here from {city}. Please send {qty} {items}, {color}, size {size}.",
    "Order for {name}: {qty} x {color} {item} ({size}). Deliver to {city}.",
    "Can I get {qty} {color} {items}? Size {size}. Name: {name}, city: {city}.",
    "Hello! {name} from {city} wants {qty} {items} in {color}, size {size} please.",
    "Please ship {qty} {color} {items} (size {size}) to {name} in {city}.",
    "I need {qty} {items}. Colour {color}, size {size}. It's for {name}, {city}.",
    "New order - customer {name}, {city}; {qty} {color} {items}, size {size}.",
]
UNSIZED_TEMPLATES = [
    "Hi, this is {name}. I'd like {qty} {color} {items}, shipped to {city}.",
    "{name} here from {city}. Please send {qty} {items} in {color}.",
    "Order for {name}: {qty} x {color} {item}. Deliver to {city}.",
    "Can I get {qty} {color} {items}? Name: {name}, city: {city}.",
    "Hello! {name} from {city} wants {qty} {color} {items} please.",
    "Please ship {qty} {color} {items} to {name} in {city}.",
    "I need {qty} {items}, colour {color}. It's for {name}, {city}.",
    "New order - customer {name}, {city}; {qty} {color} {items}.",
]


def _plural(item: str, qty: int) -> str:
    return item if qty == 1 else item + "s"


def make_order(rng: random.Random, *, test: bool) -> tuple[str, dict[str, Any]]:
    first_pool = TEST_FIRST if test else [n for n in FIRST if n not in TEST_FIRST]
    last_pool = TEST_LAST if test else [n for n in LAST if n not in TEST_LAST]
    city_pool = TEST_CITIES if test else [c for c in CITIES if c not in TEST_CITIES]
    name = f"{rng.choice(first_pool)} {rng.choice(last_pool)}"
    city = rng.choice(city_pool)
    sized = rng.random() < 0.6
    item = rng.choice(SIZED if sized else UNSIZED)
    qty = rng.randint(1, 8)
    color = rng.choice(COLORS)
    size = rng.choice(SIZES) if sized else None
    template = rng.choice(SIZED_TEMPLATES if sized else UNSIZED_TEMPLATES)
    qty_text = WORDS[qty] if rng.random() < 0.4 else str(qty)
    text = template.format(
        name=name,
        city=city,
        qty=qty_text,
        color=color,
        item=item,
        items=_plural(item, qty),
        size=size,
    )
    expected = {
        "name": name,
        "item": item,
        "quantity": qty,
        "color": color,
        "size": size,
        "city": city,
    }
    return text, expected


def answer(expected: dict[str, Any]) -> str:
    return json.dumps(expected, ensure_ascii=False)


def wrong_answer(rng: random.Random, text: str, expected: dict[str, Any]) -> str:
    """A typical failure. The kinds are balanced in length (some longer than the right answer,
    some shorter), so DPO cannot learn "longer is better" instead of "correct is better"."""
    kind = rng.randrange(4)
    if kind == 0:  # prose instead of JSON (shorter)
        return f"Sure! {expected['name']} ordered some {expected['item']}s for {expected['city']}."
    if kind == 1:  # markdown fences around pretty-printed JSON (longer)
        return "```json\n" + json.dumps(expected, indent=2) + "\n```"
    if kind == 2:  # one wrong value (same length)
        broken = dict(expected)
        field = rng.choice(["quantity", "city", "color"])
        if field == "quantity":
            broken["quantity"] = expected["quantity"] % 8 + 1
        elif field == "city":
            broken["city"] = rng.choice([c for c in CITIES if c != expected["city"]])
        else:
            broken["color"] = rng.choice([c for c in COLORS if c != expected["color"]])
        return json.dumps(broken)
    # the right object, then it does not stop (longer)
    return json.dumps(expected) + " " + json.dumps({"note": text[:40]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--dpo", type=int, default=160)
    parser.add_argument("--holdout", type=int, default=300, help="rows of holdout.jsonl")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    train_rows = []
    for i in range(args.train):
        text, expected = make_order(rng, test=False)
        if i % 40 == 3:  # scraped-looking noise that cleaning removes
            text = text.replace(". ", ".<br> ", 1).replace("&", "&amp;")
        train_rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": answer(expected)},
                ]
            }
        )
    train_rows.append(train_rows[0])  # one exact duplicate: the data report drops it
    _write(args.out / "sft_train.jsonl", train_rows)

    _write(args.out / "test.jsonl", held_out(rng, args.test, "test"))

    dpo_rows = []
    for _ in range(args.dpo):
        text, expected = make_order(rng, test=False)
        dpo_rows.append(
            {
                "prompt": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": text},
                ],
                "chosen": answer(expected),
                "rejected": wrong_answer(rng, text, expected),
            }
        )
    _write(args.out / "dpo_train.jsonl", dpo_rows)
    _write(args.out / "holdout.jsonl", held_out(rng, args.holdout, "holdout"))
    print(
        f"wrote {len(train_rows)} SFT, {args.test} test, {len(dpo_rows)} DPO, "
        f"{args.holdout} holdout rows to {args.out}"
    )


def held_out(rng: random.Random, n: int, prefix: str) -> list[dict[str, Any]]:
    """Rows ``{"id", "messages": [system, user], "expected"}`` with held-out names and cities."""
    rows = []
    for i in range(n):
        text, expected = make_order(rng, test=True)
        rows.append(
            {
                "id": f"{prefix}-{i:03d}",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": text},
                ],
                "expected": expected,
            }
        )
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
