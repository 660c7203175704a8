"""Benchmark: tunekit's data stage vs TRL's own SFT preprocessing on the same generated chat data.

Both sides tokenize, build an assistant-only loss mask and pack (best-fit decreasing) 50k synthetic chat
examples with the same tokenizer (the shipped tiny ChatML tokenizer) and max_length, in the same process:

- tunekit: `tunekit.data.build.prepare` (read JSONL -> format -> render + mask -> length policy -> pack),
  without the cache write (the cache only makes reruns faster).
- TRL: `SFTTrainer(...)` construction with `packing=True` (bfd), `assistant_only_loss=True` and a ChatML template
  carrying `{% generation %}` markers (TRL's assistant-mask path), on an in-memory `Dataset` of the same rows;
  the timed span is the trainer construction, which is dominated by `_prepare_dataset`.

    python scripts/bench_data.py [--n 50000] [--max-length 2048]

Prints a table with tokens/s for each, the ratio, and packing efficiency (non-pad tokens / token slots).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's tunekit, not an installed one

_WORDS = ("the a of to and in is it that for on with as was at by this be from or are an which one all we "
         "model data train token loss batch answer question number plus minus times value result first last "
         "because therefore example system assistant user compute explain small large quickly slowly")
WORDS = _WORDS.split()
TRL_CHATML = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + "."


def generate(n: int, seed: int = 0) -> list[dict]:
    """Chat rows with 1-3 exchanges, optional system prompt, random lengths (about 15-1000 tokens each)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        msgs = [{"role": "system", "content": sentence(rng, 3, 12)}] if rng.random() < 0.3 else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            msgs.append({"role": "user", "content": sentence(rng, 2, 30)})
            msgs.append({"role": "assistant", "content": sentence(rng, 1, 60)})
        rows.append({"messages": msgs})
    return rows


def run_tunekit(path: Path, tok: object, max_length: int) -> dict:
    from tunekit.data.build import prepare
    from tunekit.data.schema import DataConfig

    cfg = DataConfig(train=[{"path": str(path), "format": "messages"}], max_length=max_length, packing=True)
    start, cpu = time.perf_counter(), time.process_time()
    train, _, stats = prepare(cfg, tok, tok.chat_template, seed=0)  # type: ignore[attr-defined]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "tokens": stats["train"]["tokens"], "rows": len(train),
            "trained": stats["train"]["trained_tokens"], "efficiency": stats["train"]["packing"]["efficiency"]}


def run_trl(rows: list[dict], tok: object, max_length: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunekit.model.builtin import materialize

    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0), dtype=torch.float32)
    ds = Dataset.from_list(rows)
    tok.chat_template = TRL_CHATML  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_length=max_length, packing=True, packing_strategy="bfd",
                         assistant_only_loss=True, report_to="none", use_cpu=True)
        start, cpu = time.perf_counter(), time.process_time()
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    packed = trainer.train_dataset
    tokens = sum(len(x) for x in packed["input_ids"])
    trained = sum(sum(label != -100 for label in x) for x in packed["labels"])
    return {"seconds": seconds, "cpu": cpu, "tokens": tokens, "rows": len(packed), "trained": trained,
            "efficiency": round(tokens / (len(packed) * max_length), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=2, help="alternate runs of each side; the fastest counts")
    a = ap.parse_args()

    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoTokenizer

    from tunekit.model.builtin import TOKENIZER_DIR

    disable_progress_bar()
    rows = generate(a.n)
    ours: dict = {}
    theirs: dict = {}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chat.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        for _ in range(a.repeat):  # alternate, so load changes on a shared machine hit both sides alike
            r = run_tunekit(path, AutoTokenizer.from_pretrained(TOKENIZER_DIR), a.max_length)
            ours = r if not ours or r["seconds"] < ours["seconds"] else ours
            r = run_trl(rows, AutoTokenizer.from_pretrained(TOKENIZER_DIR), a.max_length)
            theirs = r if not theirs or r["seconds"] < theirs["seconds"] else theirs

    print(f"\n{a.n} chat examples, max_length {a.max_length}, tokenize + assistant mask + BFD pack "
          f"(1 process, best of {a.repeat})\n")
    header = f"| {'pipeline':<22} | {'seconds':>8} | {'CPU s':>7} | {'tokens':>10} | {'trained':>10} | " \
             f"{'tokens/s':>10} | {'rows':>6} | {'packing eff.':>12} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, r in (("tunekit prepare", ours), ("TRL SFTTrainer prepare", theirs)):
        print(f"| {name:<22} | {r['seconds']:>8.2f} | {r['cpu']:>7.2f} | {r['tokens']:>10,} | {r['trained']:>10,} | "
              f"{r['tokens'] / r['seconds']:>10,.0f} | {r['rows']:>6} | {r['efficiency']:>12.4f} |")
    ratio = (ours["tokens"] / ours["seconds"]) / (theirs["tokens"] / theirs["seconds"])
    print(f"\nthroughput ratio tunekit / TRL: {ratio:.2f}x")


if __name__ == "__main__":
    main()
