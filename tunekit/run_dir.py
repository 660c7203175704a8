"""The run directory: layout, overwrite/resume rules, metrics, versions and summary files.

    RUN_DIR/
      recipe.resolved.yaml   the validated recipe with every default filled in
      versions.json          python and library versions
      data.json              data fingerprint (sha256 of each file) and preprocessing statistics
      metrics.jsonl          one JSON object per logged step (schema in the README: loss, learning_rate, grad_norm,
                             tokens_seen, tokens_per_s, elapsed_s, peak_mem_gb, eval_* ...)
      checkpoints/checkpoint-N/   resumable state (weights, optimizer, scheduler, RNG, trainer state)
      final/                 the trained weights (adapter or full model) as safetensors + tokenizer + chat template
      stages/NAME/           a staged run's stages (reft: warmup, rl), each with checkpoints/, final/, stage.json
      summary.json           parameter counts, steps, time, final loss
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunekit.errors import UserError

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

CHECKPOINTS = "checkpoints"
FINAL = "final"
METRICS = "metrics.jsonl"
STAGES = "stages"


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output.dir: `{out}` exists and is a file")
    nonempty = out.exists() and any(out.iterdir())
    if resume:
        if not has_progress(out):
            raise UserError(f"--resume: no checkpoint in `{out / CHECKPOINTS}` to resume from "
                            "(set output.save_steps so runs write checkpoints)")
        return
    if nonempty:
        if not overwrite:
            raise UserError(f"output.dir: `{out}` is not empty. Use --resume to continue that run, "
                            "--overwrite (or output.overwrite: true) to replace it, or choose another output.dir.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step of a `checkpoint-N` directory."""
    return int(checkpoint.name.split("-")[-1])


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = [p for p in (out / CHECKPOINTS).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").exists()]
    return max(ckpts, key=checkpoint_step, default=None)


def has_progress(out: Path) -> bool:
    """Whether `--resume` has something to go on from: a checkpoint, or a finished stage of a staged run."""
    stages = sorted((out / STAGES).glob("*"))
    return latest_checkpoint(out) is not None or any(
        latest_checkpoint(d) is not None or (d / "stage.json").is_file() for d in stages)


def write_run_header(out: Path, recipe: Recipe) -> None:
    """The files every run writes before it trains: the resolved recipe and the library versions."""
    write_yaml(out / "recipe.resolved.yaml", recipe.model_dump(mode="json"))
    write_json(out / "versions.json", versions())


def write_yaml(path: Path, data: Any) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("tunekit", "torch", "transformers", "datasets", "peft", "trl", "accelerate", "tokenizers",
                "deepspeed", "bitsandbytes", "flash-attn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def truncate_metrics(out: Path, step: int, stage: str | None = None) -> None:
    """On resume, drop metric lines logged after the checkpoint's step (they will be logged again).

    With `stage`, only that stage's lines (tagged `"stage": NAME`) are truncated; other stages' lines stay.
    """
    path = out / METRICS
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and
            (json.loads(ln).get("step", 0) <= step or (stage is not None and json.loads(ln).get("stage") != stage))]
    path.write_text("".join(k + "\n" for k in keep))


# Logged by transformers/TRL but replaced by the schema's own keys (or kept in summary.json): one throughput number,
# measured one way for every trainer kind.
DROPPED_KEYS = {"train_runtime", "train_tokens_per_second", "num_input_tokens_seen", "num_tokens",
                "train_samples_per_second", "train_steps_per_second", "total_flos", "eval_num_tokens"}


def peak_memory_gb() -> float:
    """Peak accelerator memory allocated by this process (CUDA), else its peak resident set size (CPU), in GB."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 1e9, 3)
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss * (1 if sys.platform == "darwin" else 1024) / 1e9, 3)


def metrics_callback(out: Path, tags: dict | None = None) -> Any:
    """A TrainerCallback writing metrics.jsonl (the schema is in the README); `last_row` feeds the display."""
    from transformers import TrainerCallback

    class MetricsWriter(TrainerCallback):
        def __init__(self) -> None:
            self.last_row: dict | None = None
            self._start = self._last_time = time.perf_counter()
            self._last_seen = 0

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self._start = self._last_time = time.perf_counter()
            self._last_seen = state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if not state.is_world_process_zero or not logs or "train_runtime" in logs and "loss" not in logs:
                return  # the end-of-training summary event: its numbers are in summary.json
            row = {**(tags or {}), "step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
            row.update({k: v for k, v in logs.items() if isinstance(v, (int, float)) and k not in DROPPED_KEYS})
            now, seen = time.perf_counter(), state.num_input_tokens_seen
            if "loss" in logs:
                row["tokens_seen"] = seen or None
                row["tokens_per_s"] = (round((seen - self._last_seen) / (now - self._last_time), 1)
                                       if seen and now > self._last_time else None)
                self._last_time, self._last_seen = now, seen
            row.update(elapsed_s=round(now - self._start, 2), peak_mem_gb=peak_memory_gb())
            self.last_row = row
            with open(out / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    return MetricsWriter()


def final_train_loss(out: Path) -> float | None:
    path = out / METRICS
    if not path.exists():
        return None
    losses = [json.loads(ln)["loss"] for ln in path.read_text().splitlines() if '"loss"' in ln]
    return losses[-1] if losses else None
