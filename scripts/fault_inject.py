"""Fault injection: interrupt real `tunekit train` runs and check that `--resume` ends bit-identical to an
uninterrupted run (CPU, float32, builtin tiny model).

Each trial starts the same recipe, injects one fault, then resumes (`--resume`, repeated while a run is stopped)
until the run finishes, and compares `final/adapter_model.safetensors` with the reference run's, tensor by tensor
(torch.equal). Faults:

  kill9     SIGKILL at a random moment after the first logged step (often during a save: save_steps=1)
  sigterm   SIGTERM at a random moment: expect exit 143 and a checkpoint at a step boundary
  sigint    SIGINT at a random moment: expect exit 130 and a checkpoint at a step boundary
  torn      a finished run's newest checkpoint gets one file truncated (trainer_state.json, the adapter, the
            optimizer or the RNG state), final/ and summary.json removed: resume must fall back
  bitflip   as torn, but one byte of the file is flipped in place (same size: only the manifest's sha256
            tells): resume must fall back

    python scripts/fault_inject.py --trials 8 --steps 12 [--seed 0] [--keep DIR]

Prints one table row per trial (fault, when, exit code of the faulted run, resumes, outcome) and a summary line;
exits 1 if any trial did not end identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

FAULTS = ("kill9", "sigterm", "sigint", "torn", "bitflip")
TORN_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "rng_state.pth")


def write_recipe(tmp: Path, steps: int) -> Path:
    recipe = {
        "model": {"path": "builtin:tiny-llama", "dtype": "float32"},
        "data": {"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages"}], "max_length": 64},
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "trainer": {"kind": "sft", "learning_rate": 5e-3, "max_steps": steps, "per_device_batch_size": 4,
                    "logging_steps": 1, "seed": 0},
        "output": {"dir": str(tmp / "run"), "save_steps": 1},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def tunekit(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunekit", *args]


def first_step_logged(run: Path) -> bool:
    m = run / "metrics.jsonl"
    return m.exists() and bool(m.read_text().strip())


def faulted_run(recipe: Path, run: Path, fault: str, rng: random.Random) -> tuple[float, int | None]:
    """Start the run and inject a signal fault at a random moment after its first step: (seconds after, exit)."""
    proc = subprocess.Popen(tunekit("train", str(recipe)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not first_step_logged(run) and proc.poll() is None:
        time.sleep(0.05)
    delay = rng.uniform(0.0, 3.0)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, {"kill9": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[fault])
    return delay, proc.wait()


def tear(run: Path, rng: random.Random, flip: bool = False) -> str:
    """Truncate (or flip one byte of) one file of the newest checkpoint of a finished run; remove what marks it
    finished."""
    newest = max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    name = rng.choice(TORN_FILES)
    path = newest / name
    data = bytearray(path.read_bytes())
    if flip:
        data[rng.randrange(len(data))] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(bytes(data[: rng.randrange(len(data))]))
    shutil.rmtree(run / "final")
    (run / "summary.json").unlink()
    return f"{newest.name}/{name}"


def resume_until_done(recipe: Path, run: Path, limit: int = 5) -> tuple[int, str]:
    """Resume until summary.json exists: (number of resumes, last exit status or error line)."""
    for n in range(1, limit + 1):
        proc = subprocess.run(tunekit("train", str(recipe), "--resume"), capture_output=True, text=True)
        if (run / "summary.json").exists():
            return n, "ok"
        if proc.returncode not in (130, 143):
            return n, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1][:80] if proc.stderr else ''}"
    return limit, "never finished"


def identical(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "final" / "adapter_model.safetensors"), load_file(b / "final" / "adapter_model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def trial(i: int, fault: str, ref: Path, root: Path, steps: int, rng: random.Random) -> dict:
    tmp = root / f"trial-{i}"
    tmp.mkdir()
    recipe = write_recipe(tmp, steps)
    run = tmp / "run"
    row = {"trial": i, "fault": fault}
    if fault in ("torn", "bitflip"):
        shutil.copytree(ref, run)
        row.update(when=tear(run, rng, flip=fault == "bitflip"), exit="-")
    else:
        delay, code = faulted_run(recipe, run, fault, rng)
        row.update(when=f"+{delay:.2f}s", exit=code)
    if (run / "summary.json").exists():  # the fault came after the run finished
        row.update(resumes=0, outcome="finished before the fault", identical=identical(ref, run))
        return row
    n, outcome = resume_until_done(recipe, run)
    row.update(resumes=n, outcome=outcome, identical=outcome == "ok" and identical(ref, run))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of " + ", ".join(FAULTS))
    ap.add_argument("--keep", type=Path, help="keep the runs under this directory")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    faults = args.faults.split(",")
    root = args.keep or Path(tempfile.mkdtemp(prefix="tunekit-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "ref").mkdir()
    ref_recipe = write_recipe(root / "ref", args.steps)
    subprocess.run(tunekit("train", str(ref_recipe)), check=True, capture_output=True)
    ref = root / "ref" / "run"
    rows = []
    print(f"{'trial':>5}  {'fault':<8} {'when':<36} {'exit':>5}  {'resumes':>7}  {'identical':<9}  outcome", flush=True)
    for i in range(args.trials):
        row = trial(i, faults[i % len(faults)], ref, root, args.steps, rng)
        rows.append(row)
        print(f"{row['trial']:>5}  {row['fault']:<8} {row['when']:<36} {row['exit']!s:>5}  {row['resumes']:>7}  "
              f"{row['identical']!s:<9}  {row['outcome']}", flush=True)
    good = sum(r["identical"] for r in rows)
    print(f"\n{good}/{len(rows)} trials ended bit-identical to the uninterrupted run ({args.steps} steps, runs in {root})")
    (root / "results.json").write_text(json.dumps(rows, indent=1))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if good == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
