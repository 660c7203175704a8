"""Generate the shipped arithmetic word-problem dataset (tunekit/assets/data/arith/) in `prompt_answer` form.

Each row: {question, answer, solution}; the solution is a one-line reasoning path ending in `#### N`
(GSM8K style), so the numeric-match reward and the SFT warm-up read the same data. Numbers are small
(single digits, non-negative results) so a tiny model on a CPU can learn the task in minutes.
Also writes preference pairs (chosen: the right answer, rejected: the answer off by ten) for dpo/kto/orpo.

    python scripts/make_arith_data.py      # rewrites the files; deterministic (seeded)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tunekit" / "assets" / "data" / "arith"
NAMES = ["Tom", "Ana", "Lee", "Mia", "Sam", "Ivy", "Max", "Zoe"]
ITEMS = ["apple", "book", "coin", "pen", "cup", "ball", "card", "shell"]
ADD = [
    "{n} has {a} {i}s and gets {b} more. How many {i}s does {n} have now?",
    "There are {a} {i}s in a box and {b} {i}s on the table. How many {i}s are there in total?",
    "What is {a} plus {b}?",
]
SUB = [
    "{n} has {a} {i}s and gives away {b}. How many {i}s does {n} have left?",
    "What is {a} minus {b}?",
]


def problem(rng: random.Random) -> dict:
    n, i = rng.choice(NAMES), rng.choice(ITEMS)
    if rng.random() < 0.6:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        while a + b > 9:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
        q, c, step = rng.choice(ADD).format(n=n, i=i, a=a, b=b), a + b, f"{a} + {b} = {a + b}"
    else:
        a = rng.randint(0, 9)
        b = rng.randint(0, a)
        q, c, step = rng.choice(SUB).format(n=n, i=i, a=a, b=b), a - b, f"{a} - {b} = {a - b}"
    return {"question": q, "answer": str(c), "solution": f"{step}\n#### {c}"}


def plus_one(rng: random.Random) -> dict:
    """The easy variant: "... gets 1 more": the answer depends on one number of the question."""
    a, n, i = rng.randint(0, 8), rng.choice(NAMES), rng.choice(ITEMS)
    return {"question": f"{n} has {a} {i}s and gets 1 more. How many {i}s does {n} have now?",
            "answer": str(a + 1), "solution": f"{a} + 1 = {a + 1}\n#### {a + 1}"}


def wrong(c: int, rng: random.Random) -> int:
    # Off by ten: clearly wrong for single-digit problems, and a difference the builtin tiny (randomly
    # initialised) model can learn to see in a CPU-sized DPO run, so the learning-signal test is cheap.
    return c + 10


def pair(row: dict, rng: random.Random) -> dict:
    c = int(row["answer"])
    bad = wrong(c, rng)
    step = row["solution"].split("\n")[0].rsplit("=", 1)[0]
    return {"prompt": row["question"], "chosen": row["solution"], "rejected": f"{step}= {bad}\n#### {bad}"}


def write(name: str, rows: list[dict]) -> None:
    (OUT / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(1234)
    OUT.mkdir(parents=True, exist_ok=True)
    train = [problem(rng) for _ in range(512)]
    eval_ = [problem(rng) for _ in range(64)]
    write("train.jsonl", train)
    write("eval.jsonl", eval_)
    write("pref_train.jsonl", [pair(r, rng) for r in train])
    write("pref_eval.jsonl", [pair(r, rng) for r in eval_])
    unpaired = []
    for r in train:
        p = pair(r, rng)
        good = rng.random() < 0.5
        unpaired.append({"prompt": p["prompt"], "completion": p["chosen"] if good else p["rejected"], "label": good})
    write("kto_train.jsonl", unpaired)
    easy = random.Random(4321)
    write("plus_one_train.jsonl", [plus_one(easy) for _ in range(256)])
    write("plus_one_eval.jsonl", [plus_one(easy) for _ in range(32)])
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
