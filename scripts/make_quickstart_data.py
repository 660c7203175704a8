"""Generate the shipped quickstart chat dataset (tunekit/assets/data/quickstart/*.jsonl).

Small arithmetic conversations in `messages` format: some with a system prompt, some with two
user/assistant exchanges, so masking of multi-turn chats is exercised by the quickstart too.
Deterministic (seeded); rerun to regenerate byte-identical files.

    python scripts/make_quickstart_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tunekit" / "assets" / "data" / "quickstart"
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
QUESTIONS = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Please tell me {a} {op} {b}.", "{a} {op} {b} = ?"]
SYSTEMS = ["You are a careful calculator.", "Answer arithmetic questions briefly."]


def exchange(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    op = rng.choice(list(OPS))
    q = rng.choice(QUESTIONS).format(a=a, op=op, b=b)
    return q, f"{a} {op} {b} is {OPS[op](a, b)}."


def conversation(rng: random.Random) -> dict:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    for _ in range(2 if rng.random() < 0.25 else 1):
        q, a = exchange(rng)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": messages}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", 2000, 0), ("eval", 100, 1)):
        rng = random.Random(seed)
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps(conversation(rng)) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
