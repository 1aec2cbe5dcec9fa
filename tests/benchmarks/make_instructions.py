"""An alpaca-format instruction set written here (no network): twelve task families with seeded parameters,
answers a careful assistant would give, some with an ``input`` field. Used by ``chat_stop.py`` on the GPU and
small enough to read. ``python tests/benchmarks/make_instructions.py OUT_DIR`` writes ``train.jsonl`` (1,000
rows) and ``heldout.jsonl`` (60 rows whose parameters never occur in training)."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

COUNTRIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"),
             ("Brazil", "Brasília"), ("Egypt", "Cairo"), ("Norway", "Oslo"), ("India", "New Delhi"),
             ("Peru", "Lima"), ("Spain", "Madrid"), ("Vietnam", "Hanoi"), ("Chile", "Santiago"),
             ("Poland", "Warsaw"), ("Ghana", "Accra"), ("Turkey", "Ankara"), ("Greece", "Athens"),
             ("Morocco", "Rabat"), ("Sweden", "Stockholm"), ("Mexico", "Mexico City"), ("Italy", "Rome"),
             ("Portugal", "Lisbon"), ("Thailand", "Bangkok"), ("Austria", "Vienna"), ("Cuba", "Havana")]
NOUNS = [("cat", "cats"), ("child", "children"), ("mouse", "mice"), ("box", "boxes"), ("city", "cities"),
         ("leaf", "leaves"), ("person", "people"), ("tooth", "teeth"), ("bus", "buses"), ("wolf", "wolves"),
         ("day", "days"), ("goose", "geese"), ("story", "stories"), ("knife", "knives"), ("foot", "feet")]
REVIEWS = [("The battery lasts all day and the screen is bright.", "positive"),
           ("It broke after two days and support never answered.", "negative"),
           ("Delivery was fast, and the fabric feels great.", "positive"),
           ("The soup was cold and far too salty.", "negative"),
           ("A calm, beautiful film with a clever ending.", "positive"),
           ("The app crashes every time I open the camera.", "negative"),
           ("Friendly staff and the room was spotless.", "positive"),
           ("Too loud, too slow, and overpriced.", "negative")]
WORDS = "river stone cloud lamp garden window pencil bridge mirror candle forest rocket".split()


def _celsius(r):
    c = r.randrange(-30, 120)
    f = c * 9 / 5 + 32
    return (f"Convert {c} degrees Celsius to Fahrenheit.", "",
            f"{c} °C is {f:g} °F. To convert, multiply by 9/5 and add 32: {c} × 9/5 + 32 = {f:g}.")


def _capital(r):
    country, city = r.choice(COUNTRIES)
    return (f"What is the capital of {country}?", "", f"The capital of {country} is {city}.")


def _plural(r):
    one, many = r.choice(NOUNS)
    return ("Give the plural of the word.", one, f"The plural of \"{one}\" is \"{many}\".")


def _sort(r):
    nums = r.sample(range(1, 200), r.randrange(4, 8))
    return ("Sort these numbers from smallest to largest.", ", ".join(map(str, nums)),
            "Sorted: " + ", ".join(map(str, sorted(nums))) + ".")


def _sum(r):
    a, b = r.randrange(10, 999), r.randrange(10, 999)
    return (f"What is {a} plus {b}?", "", f"{a} + {b} = {a + b}.")


def _reverse(r):
    words = r.sample(WORDS, r.randrange(3, 6))
    return ("Reverse the order of the words.", " ".join(words), " ".join(reversed(words)))


def _sentiment(r):
    text, label = r.choice(REVIEWS)
    return ("Is the sentiment of this review positive or negative?", text,
            f"The sentiment is {label}.")


def _vowels(r):
    w = r.choice(WORDS + [n for n, _ in NOUNS])
    n = sum(ch in "aeiou" for ch in w)
    return (f"How many vowels are in the word \"{w}\"?", "", f"\"{w}\" has {n} vowel{'s' if n != 1 else ''}.")


def _even(r):
    n = r.randrange(1, 10_000)
    return (f"Is {n} an even number?", "",
            f"{'Yes' if n % 2 == 0 else 'No'}, {n} is {'even' if n % 2 == 0 else 'odd'}"
            f"{'' if n % 2 == 0 else ' because it leaves a remainder of 1 when divided by 2'}.")


def _minutes(r):
    h, m = r.randrange(1, 12), r.randrange(0, 60)
    return (f"How many minutes are in {h} hours and {m} minutes?", "", f"{h} hours and {m} minutes is "
            f"{h * 60 + m} minutes ({h} × 60 + {m}).")


def _acronym(r):
    words = r.sample(WORDS, 3)
    return ("Make an acronym from the first letters of these words.", " ".join(words),
            "".join(w[0].upper() for w in words))


def _list(r):
    k = r.randrange(2, 5)
    country, _ = r.choice(COUNTRIES)
    return (f"Name {k} things a traveller should pack for a trip to {country}.", "",
            "\n".join(f"{i + 1}. {item}" for i, item in enumerate(
                r.sample(["a passport", "comfortable shoes", "a phone charger", "a rain jacket", "sunscreen",
                          "a water bottle", "a travel adapter", "a small first-aid kit"], k))))


FAMILIES = [_celsius, _capital, _plural, _sort, _sum, _reverse, _sentiment, _vowels, _even, _minutes, _acronym,
            _list]


def make(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    r = random.Random(seed)
    rows, seen = [], set(exclude or ())
    while len(rows) < n:
        instruction, inp, output = r.choice(FAMILIES)(r)
        key = instruction + "\n" + inp
        if key in seen:
            continue
        seen.add(key)
        rows.append({"instruction": instruction, "input": inp, "output": output})
    return rows


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = make(1000, seed=1)
    held = make(60, seed=2, exclude={r["instruction"] + "\n" + r["input"] for r in train})
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", held)):
        (out_dir / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(train)} + {len(held)} rows to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "instructions")
