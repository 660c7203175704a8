"""Generate the shipped tool-calling dataset (tunekit/assets/data/tools/): train.jsonl, eval.jsonl, tools.json.

Conversations in `messages` format (OpenAI shape) where the assistant calls one of two tools, reads the result
from a `tool` turn and answers; some rows need no tool. The tool schemas live in tools.json and reach every row
through the dataset's `tools:` key (recipes/tools.yaml). eval.jsonl holds rows that end at the assistant's tool
call, so a generation eval checks the call itself (`tool_call_match`, `tool_call_format`).
Deterministic (seeded); rerun to regenerate byte-identical files.

    python scripts/make_tools_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tunekit" / "assets" / "data" / "tools"
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
CITIES = {"Paris": "sunny, 21 C", "Oslo": "snow, -3 C", "Lima": "cloudy, 18 C", "Rome": "rain, 12 C",
          "Tokyo": "clear, 15 C", "Cairo": "hot, 34 C"}
TOOLS = [
    {"type": "function", "function": {
        "name": "calc", "description": "Arithmetic on two integers.",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "integer"}, "op": {"type": "string", "enum": list(OPS)}, "b": {"type": "integer"}},
            "required": ["a", "op", "b"]}}},
    {"type": "function", "function": {
        "name": "weather", "description": "Today's weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]
SYSTEM = "Use the tools when they help."
CALC_QUESTIONS = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?"]
WEATHER_QUESTIONS = ["Weather in {city}?", "How is the weather in {city} today?", "Is it cold in {city}?"]
CHAT = [("Hi!", "Hello! Ask me a sum or about the weather."), ("Thanks.", "You are welcome.")]


def call_turn(name: str, arguments: dict, k: int) -> dict:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "id": f"call_{k}", "function": {"name": name, "arguments": arguments}}]}


def tool_exchange(rng: random.Random, k: int) -> list[dict]:
    """A question, the assistant's call, the tool's result and the answer that uses it."""
    if rng.random() < 0.6:
        a, b, op = rng.randint(0, 20), rng.randint(0, 20), rng.choice(list(OPS))
        result = str(OPS[op](a, b))
        question, call = rng.choice(CALC_QUESTIONS).format(a=a, op=op, b=b), call_turn("calc", {"a": a, "op": op, "b": b}, k)
        answer = f"{a} {op} {b} is {result}."
    else:
        city = rng.choice(list(CITIES))
        result, question = CITIES[city], rng.choice(WEATHER_QUESTIONS).format(city=city)
        call, answer = call_turn("weather", {"city": city}, k), f"In {city} it is {CITIES[city]}."
    return [{"role": "user", "content": question}, call,
            {"role": "tool", "tool_call_id": f"call_{k}", "name": call["tool_calls"][0]["function"]["name"],
             "content": result},
            {"role": "assistant", "content": answer}]


def conversation(rng: random.Random) -> dict:
    messages = [{"role": "system", "content": SYSTEM}]
    if rng.random() < 0.15:
        q, a = rng.choice(CHAT)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages += tool_exchange(rng, 0)
    return {"messages": messages}


def eval_row(rng: random.Random) -> dict:
    """A conversation cut after the tool call: the reference answer is the call."""
    return {"messages": [{"role": "system", "content": SYSTEM}, *tool_exchange(rng, 0)[:2]]}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tools.json").write_text(json.dumps(TOOLS, indent=2) + "\n", encoding="utf-8")
    for name, n, seed, make in (("train", 1000, 0, conversation), ("eval", 50, 1, eval_row)):
        rng = random.Random(seed)
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps(make(rng)) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
