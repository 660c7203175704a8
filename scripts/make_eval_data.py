"""Generate the shipped eval-task data (tunekit/assets/data/eval/*.jsonl) for the quickstart model.

`arith-qa.jsonl`: {prompt, answer} pairs in the quickstart style (generation task, numeric answers).
`arith-choice.jsonl`: {prompt, choices, answer} with four candidate answers (multiple-choice task).
Deterministic (seeded, a different seed from the training data); rerun to regenerate identical files.

    python scripts/make_eval_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tunekit" / "assets" / "data" / "eval"
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
QUESTIONS = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?"]


def question(rng: random.Random) -> tuple[str, str, int]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    op = rng.choice(list(OPS))
    return rng.choice(QUESTIONS).format(a=a, op=op, b=b), f"{a} {op} {b} is", OPS[op](a, b)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    with open(OUT / "arith-qa.jsonl", "w", encoding="utf-8") as f:
        for _ in range(40):
            q, stem, value = question(rng)
            f.write(json.dumps({"prompt": q, "answer": f"{stem} {value}."}) + "\n")
    with open(OUT / "arith-choice.jsonl", "w", encoding="utf-8") as f:
        for _ in range(40):
            q, stem, value = question(rng)
            wrong = rng.sample([d for d in (-10, -2, -1, 1, 2, 3, 10) if d], 3)
            choices = [f"{stem} {value + d}." for d in [0, *wrong]]
            rng.shuffle(choices)
            f.write(json.dumps({"prompt": q, "choices": choices, "answer": choices.index(f"{stem} {value}.")}) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
