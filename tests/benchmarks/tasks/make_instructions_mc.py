"""A multiple-choice task of our own over the instruction set of make_instructions.py, in lm-evaluation-harness's
format (instructions_mc.yaml over instructions_mc.jsonl, written next to this file): each row is an instruction
whose parameters never occur in the training set (seed 2, the training rows excluded), with four answers in the
trained style, one right and three taken from other rows of the same family. A model that learnt the task picks
the right one; the style alone does not tell them apart.

    python tests/benchmarks/tasks/make_instructions_mc.py      (rewrites instructions_mc.jsonl, 120 rows)
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from make_instructions import FAMILIES, make  # noqa: E402

OPEN_ENDED = {"_list"}   # several right answers: not a multiple-choice question


def build(n: int = 120, seed: int = 3) -> list[dict]:
    """``n`` rows spread evenly over the closed-answer families, none of them a training row."""
    seen = {r["instruction"] + "\n" + r["input"] for r in make(1000, seed=1)}
    rng = random.Random(seed)
    families = [f for f in FAMILIES if f.__name__ not in OPEN_ENDED]
    pools: dict = {}
    for f in families:   # 30 unseen rows per family (parameters drawn from the family's own generator)
        pool, tries = [], 0
        while len(pool) < 30 and tries < 3000:
            tries += 1
            instruction, inp, output = f(rng)
            key = instruction + "\n" + inp
            if key not in seen and all(output != p[2] for p in pool):
                seen.add(key)
                pool.append((instruction, inp, output))
        pools[f.__name__] = pool
    names = [name for name, pool in pools.items() if len(pool) >= 4]
    out = []
    while len(out) < n:
        fam = names[len(out) % len(names)]
        pool = pools[fam]
        instruction, inp, output = pool[(len(out) // len(names)) % len(pool)]
        others = [p[2] for p in pool if p[2] != output]
        rng.shuffle(others)
        choices = [output, *others[:3]]
        rng.shuffle(choices)
        question = instruction + (f"\n{inp}" if inp else "")
        out.append({"question": question, "choices": choices, "answer": choices.index(output), "family": fam})
    return out


if __name__ == "__main__":
    rows = build()
    (HERE / "instructions_mc.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                encoding="utf-8")
    print(f"wrote {len(rows)} rows to {HERE / 'instructions_mc.jsonl'}")
