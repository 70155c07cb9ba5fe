"""Build ``general_mc.jsonl``, the forgetting check's general multiple-choice set, offline.

Every item was written for this project: generated here from templates whose answers are computed
(arithmetic, comparisons, letter counts, calendar order) or taken from the short fact tables below,
written by hand for loraplex (antonyms, units, capitals, colours, animal classes, number words).
No external dataset is read, so there is nothing to license and nothing fetched. The items are
meant to be easy for a small instruction model (SmolLM2-135M scores well above chance, below the
ceiling), so an adapter that damages general ability shows a drop the gate can detect.

Deterministic: a fixed seed draws distractors and places the answer; answer positions are
balanced (each of the 4 positions holds the answer for a quarter of the items). A test checks the
shipped file equals what this script writes.

    python -m services.evaluator.tasks.build_general_mc
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
OUT = HERE / "general_mc.jsonl"
SEED = 16
N_CHOICES = 4

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad",
    "light": "dark", "open": "closed", "early": "late", "full": "empty", "tall": "short",
    "wet": "dry", "old": "new", "hard": "soft", "rich": "poor", "strong": "weak",
    "win": "lose", "day": "night", "in": "out", "left": "right", "push": "pull",
    "love": "hate", "clean": "dirty", "thick": "thin", "heavy": "light", "loud": "quiet",
    "inside": "outside", "first": "last", "buy": "sell", "begin": "end", "true": "false",
    "north": "south", "east": "west", "above": "below", "give": "take", "wide": "narrow",
    "sweet": "sour", "young": "old", "cheap": "expensive", "asleep": "awake", "arrive": "leave",
}  # fmt: skip
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo",
    "the United Kingdom": "London", "Portugal": "Lisbon", "Greece": "Athens",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "Hungary": "Budapest",
    "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Thailand": "Bangkok",
    "South Korea": "Seoul", "Argentina": "Buenos Aires", "Peru": "Lima", "Mexico": "Mexico City",
    "Cuba": "Havana", "Kenya": "Nairobi", "Iran": "Tehran", "Iraq": "Baghdad",
    "Canada": "Ottawa", "Australia": "Canberra", "India": "New Delhi", "Chile": "Santiago",
    "Colombia": "Bogota", "Czechia": "Prague", "Ukraine": "Kyiv", "Turkey": "Ankara",
    "the Philippines": "Manila", "Indonesia": "Jakarta",
}  # fmt: skip
COLOURS = {
    "a banana": "yellow", "grass": "green", "snow": "white", "coal": "black",
    "a ripe tomato": "red", "the sky on a clear day": "blue", "an orange": "orange",
    "milk": "white", "a lemon": "yellow", "a strawberry": "red", "a crow": "black",
    "a carrot": "orange", "a fire truck": "red", "the sun in a child's drawing": "yellow",
    "a leaf in summer": "green", "chocolate": "brown", "a polar bear": "white",
    "a lime": "green", "a pumpkin": "orange", "the sea in a child's drawing": "blue",
}  # fmt: skip
ANIMALS = {
    "dog": "mammal", "cat": "mammal", "horse": "mammal", "cow": "mammal", "whale": "mammal",
    "lion": "mammal", "elephant": "mammal", "mouse": "mammal", "bat": "mammal",
    "dolphin": "mammal", "eagle": "bird", "sparrow": "bird", "penguin": "bird", "owl": "bird",
    "parrot": "bird", "duck": "bird", "chicken": "bird", "salmon": "fish", "shark": "fish",
    "trout": "fish", "tuna": "fish", "goldfish": "fish", "snake": "reptile", "lizard": "reptile",
    "crocodile": "reptile", "turtle": "reptile", "ant": "insect", "bee": "insect",
    "butterfly": "insect", "beetle": "insect", "mosquito": "insect", "frog": "amphibian",
    "toad": "amphibian", "salamander": "amphibian",
}  # fmt: skip
ANIMAL_CLASSES = ["mammal", "bird", "fish", "reptile", "insect", "amphibian"]
UNITS = [
    ("How many minutes are in an hour?", "60", ["30", "100", "24"]),
    ("How many seconds are in a minute?", "60", ["100", "30", "10"]),
    ("How many hours are in a day?", "24", ["12", "60", "48"]),
    ("How many days are in a week?", "7", ["5", "10", "6"]),
    ("How many months are in a year?", "12", ["10", "52", "24"]),
    ("How many centimeters are in a meter?", "100", ["10", "1000", "60"]),
    ("How many meters are in a kilometer?", "1000", ["100", "10", "60"]),
    ("How many grams are in a kilogram?", "1000", ["100", "10", "60"]),
    ("How many milliliters are in a liter?", "1000", ["100", "10", "12"]),
    ("How many days are in a leap year?", "366", ["365", "360", "300"]),
    ("How many weeks are in a year?", "52", ["12", "48", "100"]),
    ("How many years are in a century?", "100", ["10", "1000", "50"]),
    ("How many years are in a decade?", "10", ["100", "12", "5"]),
    ("How many legs does a spider have?", "8", ["6", "4", "10"]),
    ("How many legs does an insect have?", "6", ["8", "4", "10"]),
    ("How many sides does a triangle have?", "3", ["4", "5", "6"]),
    ("How many sides does a square have?", "4", ["3", "5", "6"]),
    ("How many sides does a hexagon have?", "6", ["5", "8", "4"]),
    ("At what temperature in Celsius does water freeze?", "0", ["100", "32", "10"]),
    ("At what temperature in Celsius does water boil at sea level?", "100", ["0", "50", "212"]),
    ("How many continents are there on Earth?", "7", ["5", "9", "12"]),
    ("How many players are on a soccer team on the field?", "11", ["9", "5", "15"]),
    ("How many cents are in a dollar?", "100", ["10", "50", "1000"]),
    ("How many hours are in two days?", "48", ["24", "36", "60"]),
    ("How many minutes are in half an hour?", "30", ["60", "15", "50"]),
]
NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
]  # fmt: skip
WORDS = [
    "cat", "tree", "house", "apple", "river", "garden", "window", "bread", "pencil", "orange",
    "dog", "moon", "table", "flower", "summer", "planet", "bottle", "sun", "chair", "water",
    "island", "mountain", "book", "lamp", "rabbit", "cloud", "doctor", "basket", "yellow", "ship",
]  # fmt: skip

Draft = tuple[str, str, str, list[str]]  # (category, question, answer, distractor pool)


def _numbers(answer: int, spread: tuple[int, ...]) -> list[str]:
    return [str(answer + d) for d in sorted(set(spread)) if answer + d >= 0 and d != 0]


def _drafts(rng: random.Random) -> Iterator[Draft]:
    pairs = [(a, b) for a in range(1, 21) for b in range(1, 21)]
    for a, b in rng.sample(pairs, 60):
        yield "add", f"What is {a} + {b}?", str(a + b), _numbers(a + b, (-2, -1, 1, 2, 10))
    minus = [(a, b) for a in range(5, 31) for b in range(1, a)]
    for a, b in rng.sample(minus, 30):
        yield "sub", f"What is {a} - {b}?", str(a - b), _numbers(a - b, (-2, -1, 1, 2, 10))
    for a, b in rng.sample([(a, b) for a in range(2, 11) for b in range(2, 11)], 40):
        yield "mul", f"What is {a} times {b}?", str(a * b), _numbers(a * b, (-a, -1, 1, a))
    for k in range(40):
        nums = rng.sample(range(1, 100), N_CHOICES)
        pick = max if k % 2 == 0 else min
        word = "largest" if pick is max else "smallest"
        rest = [str(x) for x in nums if x != pick(nums)]
        yield (
            "compare",
            f"Which number is the {word}: {', '.join(map(str, nums))}?",
            str(pick(nums)),
            rest,
        )
    for w in WORDS:
        n = len(w)
        yield (
            "letters",
            f"How many letters are in the word '{w}'?",
            str(n),
            _numbers(n, (-2, -1, 1, 2)),
        )
    for seq, name in ((DAYS, "day"), (MONTHS, "month")):
        for i, x in enumerate(seq):
            nxt, prev = seq[(i + 1) % len(seq)], seq[i - 1]
            others = [y for y in seq if y not in (x, nxt)]
            yield "calendar", f"Which {name} comes after {x}?", nxt, others
            others = [y for y in seq if y not in (x, prev)]
            yield "calendar", f"Which {name} comes before {x}?", prev, others
    words = sorted(set(OPPOSITES) | set(OPPOSITES.values()))
    for w, opp in OPPOSITES.items():
        # Leave out every listed opposite of w ("old": "new" and "young": "old").
        right = {v for k, v in OPPOSITES.items() if k == w} | {
            k for k, v in OPPOSITES.items() if v == w
        }
        pool = [x for x in words if x != w and x not in right]
        yield "opposite", f"What is the opposite of '{w}'?", opp, pool
    for question, answer, wrong in UNITS:
        yield "units", question, answer, wrong
    cities = sorted(CAPITALS.values())
    for country, city in CAPITALS.items():
        yield (
            "capital",
            f"What is the capital of {country}?",
            city,
            [c for c in cities if c != city],
        )
    colours = sorted(set(COLOURS.values()))
    for thing, colour in COLOURS.items():
        yield "colour", f"What color is {thing}?", colour, [c for c in colours if c != colour]
    for animal, cls in ANIMALS.items():
        article = "an" if animal[0] in "aeiou" else "a"
        q = f"What kind of animal is {article} {animal}?"
        yield "animal", q, cls, [c for c in ANIMAL_CLASSES if c != cls]
    for n in range(21):
        pool = [w for w in NUMBER_WORDS if w != NUMBER_WORDS[n]]
        yield "number_word", f"How is the number {n} written in words?", NUMBER_WORDS[n], pool


def build() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    drafts = list(_drafts(rng))
    # Exactly balanced answer positions: a shuffled list with each position equally often.
    positions = [i % N_CHOICES for i in range(len(drafts))]
    rng.shuffle(positions)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for (category, question, answer, pool), pos in zip(drafts, positions, strict=True):
        wrong = rng.sample(sorted(set(pool) - {answer}), N_CHOICES - 1)
        choices = [*wrong[:pos], answer, *wrong[pos:]]
        seen[category] = seen.get(category, 0) + 1
        rows.append(
            {
                "id": f"{category}-{seen[category]:03d}",
                "question": question,
                "choices": choices,
                "answer": pos,
            }
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    OUT.write_text(render(build()))
    print(OUT)
