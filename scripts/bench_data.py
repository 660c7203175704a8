"""Benchmark: tunekit's data stage vs TRL's own SFT preprocessing on the same generated chat data.

Both sides tokenize, build an assistant-only loss mask and pack (best-fit decreasing) synthetic chat examples
(1-3 exchanges, optional system prompt) with the same tokenizer (the shipped tiny ChatML tokenizer) and
max_length:

- tunekit: `build_datasets` into a fresh cache directory (read JSONL -> format -> render + mask -> length
  policy -> pack -> Arrow files), on `--num-proc` processes.
- TRL: `SFTTrainer(...)` construction with `packing=True` (bfd), `assistant_only_loss=True` and a ChatML template
  carrying `{% generation %}` markers (TRL's assistant-mask path); the timed span is the trainer construction,
  which is dominated by `_prepare_dataset`.

Two modes:

    python scripts/bench_data.py [--n 50000] [--max-length 2048] [--num-proc 1]
        both sides in this process on an in-memory Dataset for TRL (as before), best of --repeat

    python scripts/bench_data.py --scale 10000 100000 1000000 [--procs 1 2] [--trl-upto 100000]
        each run in a fresh child process reading the same JSONL file (TRL's side loads it with
        `load_dataset("json")`, counted in its wall time); reports wall, CPU, tokens/s and the peak RSS of the
        child (`ru_maxrss`) and of its largest worker process

    python scripts/bench_data.py --scale 1000000 --format preference [--procs 1 2]
        the same for preference pairs ({prompt, chosen, rejected}; a third of the prompts are conversations):
        tunekit only (TRL tokenizes preference rows inside its trainer), rows/s instead of tokens/s

Prints markdown tables (tokens/s, ratios, packing efficiency: non-pad tokens / token slots).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def chat_rows(n: int, seed: int = 0) -> Iterator[dict]:
    """Chat rows with 1-3 exchanges, optional system prompt, random lengths (about 15-1000 tokens each)."""
    rng = random.Random(seed)
    for _ in range(n):
        msgs = [{"role": "system", "content": sentence(rng, 3, 12)}] if rng.random() < 0.3 else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            msgs.append({"role": "user", "content": sentence(rng, 2, 30)})
            msgs.append({"role": "assistant", "content": sentence(rng, 1, 60)})
        yield {"messages": msgs}


def preference_rows(n: int, seed: int = 0) -> Iterator[dict]:
    """Preference pairs: a prompt (a string, or a conversation ending with the user turn in a third of the rows)
    and two answers of random length (the rejected one starts with "No.", so the two always differ)."""
    rng = random.Random(seed)
    for _ in range(n):
        prompt: object = sentence(rng, 2, 30)
        if rng.random() < 0.33:
            prompt = [{"role": "system", "content": sentence(rng, 3, 12)}, {"role": "user", "content": prompt},
                      {"role": "assistant", "content": sentence(rng, 1, 40)},
                      {"role": "user", "content": sentence(rng, 2, 20)}]
        yield {"prompt": prompt, "chosen": sentence(rng, 1, 60), "rejected": "No. " + sentence(rng, 1, 60)}


def generate(n: int, seed: int = 0) -> list[dict]:
    return list(chat_rows(n, seed))


def write_jsonl(path: Path, n: int, fmt: str = "messages") -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in (preference_rows if fmt == "preference" else chat_rows)(n):
            f.write(json.dumps(row) + "\n")


def _rss_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of its largest finished child (Linux: ru_maxrss in KB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_tunekit(path: Path, tok: object, max_length: int, num_proc: int = 1, fmt: str = "messages") -> dict:
    """`fmt` preference: the rows count as the unit ("tokens" holds the rows written; TRL tokenizes them later)."""
    from tunekit.data.build import build_datasets
    from tunekit.data.schema import DataConfig

    pairs = fmt == "preference"
    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(train=[{"path": str(path), "format": fmt}], max_length=max_length, packing=not pairs,
                         num_proc=num_proc, cache_dir=cache)
        start, cpu = time.perf_counter(), _cpu()
        train, _, stats = build_datasets(cfg, tok, seed=0)
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu
        rows = len(train)
    if pairs:
        return {"seconds": seconds, "cpu": cpu, "tokens": rows, "rows": rows, "trained": 0, "efficiency": 0.0}
    return {"seconds": seconds, "cpu": cpu, "tokens": stats["train"]["tokens"], "rows": rows,
            "trained": stats["train"]["trained_tokens"], "efficiency": stats["train"]["packing"]["efficiency"]}


def run_trl(rows: object, tok: object, max_length: int, num_proc: int = 1) -> dict:
    """`rows`: a list of rows (in-memory Dataset, not timed) or a JSONL path (loaded inside the timed span)."""
    import torch
    from datasets import Dataset, load_dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunekit.model.builtin import materialize

    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0), dtype=torch.float32)
    tok.chat_template = TRL_CHATML  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_length=max_length, packing=True, packing_strategy="bfd",
                         assistant_only_loss=True, report_to="none", use_cpu=True,
                         dataset_num_proc=num_proc if num_proc > 1 else None)
        ds = Dataset.from_list(rows) if isinstance(rows, list) else None
        start, cpu = time.perf_counter(), _cpu()
        if ds is None:
            ds = load_dataset("json", data_files=str(rows), split="train")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    packed = trainer.train_dataset
    tokens = trained = 0
    for batch in packed.iter(batch_size=4096):
        tokens += sum(len(x) for x in batch["input_ids"])
        trained += sum(sum(label != -100 for label in x) for x in batch["labels"])
    return {"seconds": seconds, "cpu": cpu, "tokens": tokens, "rows": len(packed), "trained": trained,
            "efficiency": round(tokens / (len(packed) * max_length), 4)}


def child(a: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; prints its result as one JSON line."""
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoTokenizer

    from tunekit.model.builtin import TOKENIZER_DIR

    disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    if a.child == "tunekit":
        r = run_tunekit(Path(a.path), tok, a.max_length, a.num_proc, a.format)
    else:
        r = run_trl(Path(a.path), tok, a.max_length, a.num_proc)
    r["rss_main_mb"], r["rss_worker_mb"] = _rss_mb()
    print(json.dumps(r))


def scale(a: argparse.Namespace) -> None:
    pairs = a.format == "preference"
    unit = "rows" if pairs else "tokens"
    print(f"\nscaling: {'preference pairs' if pairs else 'packed BFD'}, max_length {a.max_length}, fresh cache and "
          f"child process per run; load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
    header = (f"| {'rows':>9} | {'pipeline':<16} | {'procs':>5} | {'wall s':>8} | {'CPU s':>8} | {unit:>12} | "
              f"{unit + '/s':>9} | {'peak RSS main':>13} | {'peak RSS worker':>15} | {'vs TRL':>6} |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    with tempfile.TemporaryDirectory() as d:
        for n in a.scale:
            path = Path(d) / f"chat-{n}.jsonl"
            write_jsonl(path, n, a.format)
            runs = [("tunekit", p) for p in a.procs]
            runs += [("TRL", p) for p in a.procs if n <= a.trl_upto and p in a.trl_procs and not pairs]
            results = {}
            for side, procs in runs:
                cmd = [sys.executable, __file__, "--child", side.lower(), "--path", str(path), "--num-proc",
                       str(procs), "--max-length", str(a.max_length), "--format", a.format]
                env = {**os.environ, "HF_DATASETS_CACHE": str(Path(d) / "hf"), "HF_HUB_OFFLINE": "1"}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode:
                    print(f"| {n:>9,} | {side:<16} | {procs:>5} | failed: {out.stderr.strip()[-300:]}")
                    continue
                results[side, procs] = json.loads(out.stdout.strip().splitlines()[-1])
            trl = results.get(("TRL", 1))
            for (side, procs), r in results.items():
                ratio = f"{(r['tokens'] / r['seconds']) / (trl['tokens'] / trl['seconds']):.2f}x" if trl else "-"
                print(f"| {n:>9,} | {side:<16} | {procs:>5} | {r['seconds']:>8.1f} | {r['cpu']:>8.1f} | "
                      f"{r['tokens']:>12,} | {r['tokens'] / r['seconds']:>9,.0f} | {r['rss_main_mb']:>10,.0f} MB | "
                      f"{r['rss_worker_mb']:>12,.0f} MB | {ratio:>6} |", flush=True)
            path.unlink()


def compare(a: argparse.Namespace) -> None:
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoTokenizer

    from tunekit.model.builtin import TOKENIZER_DIR

    disable_progress_bar()
    rows = generate(a.n)
    ours: dict = {}
    theirs: dict = {}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chat.jsonl"
        write_jsonl(path, a.n)
        for _ in range(a.repeat):  # alternate, so load changes on a shared machine hit both sides alike
            r = run_tunekit(path, AutoTokenizer.from_pretrained(TOKENIZER_DIR), a.max_length, a.num_proc)
            ours = r if not ours or r["seconds"] < ours["seconds"] else ours
            r = run_trl(rows, AutoTokenizer.from_pretrained(TOKENIZER_DIR), a.max_length)
            theirs = r if not theirs or r["seconds"] < theirs["seconds"] else theirs

    print(f"\n{a.n} chat examples, max_length {a.max_length}, tokenize + assistant mask + BFD pack "
          f"(tunekit on {a.num_proc} process(es), TRL on 1; best of {a.repeat})\n")
    header = f"| {'pipeline':<22} | {'seconds':>8} | {'CPU s':>7} | {'tokens':>10} | {'trained':>10} | " \
             f"{'tokens/s':>10} | {'rows':>6} | {'packing eff.':>12} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, r in (("tunekit build", ours), ("TRL SFTTrainer prepare", theirs)):
        print(f"| {name:<22} | {r['seconds']:>8.2f} | {r['cpu']:>7.2f} | {r['tokens']:>10,} | {r['trained']:>10,} | "
              f"{r['tokens'] / r['seconds']:>10,.0f} | {r['rows']:>6} | {r['efficiency']:>12.4f} |")
    ratio = (ours["tokens"] / ours["seconds"]) / (theirs["tokens"] / theirs["seconds"])
    print(f"\nthroughput ratio tunekit / TRL: {ratio:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=2, help="alternate runs of each side; the fastest counts")
    ap.add_argument("--num-proc", type=int, default=1, help="tunekit's data.num_proc (compare mode, child runs)")
    ap.add_argument("--scale", type=int, nargs="*", help="scaling mode: these row counts")
    ap.add_argument("--procs", type=int, nargs="*", default=[1, 2], help="scaling mode: num_proc values to run")
    ap.add_argument("--trl-upto", type=int, default=100_000, help="scaling mode: run TRL up to this many rows")
    ap.add_argument("--trl-procs", type=int, nargs="*", default=[1], help="scaling mode: TRL dataset_num_proc")
    ap.add_argument("--format", choices=("messages", "preference"), default="messages",
                    help="scaling mode: chat rows (SFT) or preference pairs")
    ap.add_argument("--child", choices=("tunekit", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
    elif a.scale:
        scale(a)
    else:
        compare(a)


if __name__ == "__main__":
    main()
