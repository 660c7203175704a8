"""metrics.jsonl (one row per log event) and the run-level throughput that summary.json records.

The keys are defined in the README ("The console and metrics.jsonl"). Tokens are the trainer's
`num_input_tokens_seen` counted as `non_padding` (transformers: the attention mask's ones, or the input ids that
are not the pad token when a padding-free batch has no mask), summed over all processes. MFU is model FLOPs per
second (`plan/throughput.py`: 6N + attention for full training, 4N_base + 6A + attention with adapters) over the
device's peak dense bf16 FLOP/s (`plan/hardware.py`'s table, found by the CUDA device name); null on CPU, on a
GPU the table does not list, and for trainer kinds whose step is not one forward + backward per token.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.files import append_line
from tunekit.run_dir import METRICS

WARMUP_STEPS = 1  # optimizer steps of each process left out of summary.json's throughput (CUDA init, allocator)

# Logged by transformers/TRL but replaced by the schema's own keys (or kept in summary.json): one throughput number,
# measured one way for every trainer kind.
DROPPED_KEYS = {"train_runtime", "train_tokens_per_second", "num_input_tokens_seen", "num_tokens",
                "train_samples_per_second", "train_steps_per_second", "total_flos", "eval_num_tokens"}


@dataclass(frozen=True)
class Speed:
    """What turns tokens/s into per-device tokens/s and MFU."""

    world: int = 1  # processes (devices) training together
    flops_per_token: float | None = None  # None: MFU not defined for this run (see `note`)
    peak_flops: float | None = None  # per device, dense bf16 FLOP/s; None on CPU or an unknown GPU
    device: str = "cpu"
    facts: dict = field(default_factory=dict)  # flops_formula, attention_seq ... (copied into summary.json)
    note: str | None = None  # why MFU is null

    def mfu(self, tokens_per_s_per_device: float | None) -> float | None:
        if None in (self.flops_per_token, self.peak_flops, tokens_per_s_per_device):
            return None
        return round(tokens_per_s_per_device * self.flops_per_token / self.peak_flops, 4)  # type: ignore[operator]

    def per_device(self, tokens_per_s: float | None) -> float | None:
        return None if tokens_per_s is None else round(tokens_per_s / self.world, 1)


def peak_memory() -> tuple[float, float | None]:
    """(peak GB allocated by torch on the current CUDA device, else this process's peak resident set size; peak GB
    reserved by torch's CUDA caching allocator, None on CPU)."""
    import resource
    import sys

    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 1e9, 3), round(torch.cuda.max_memory_reserved() / 1e9, 3)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss * (1 if sys.platform == "darwin" else 1024) / 1e9, 3), None


def _sync() -> float:
    """Now, after the GPU finished the work queued so far (step times are then the GPU's, not the launch queue's)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class CallTimer:
    """Wall seconds spent inside one method of an object (the RL stage's generation: `time_calls`), the GPU's work
    included (synchronised on both sides)."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def wrap(self, obj: Any, name: str) -> None:
        inner = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = _sync()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += _sync() - start
                self.calls += 1

        setattr(obj, name, timed)


class StepClock:
    """Training-step seconds and tokens after each process's first WARMUP_STEPS steps: time between the trainer's
    step begin and step end events (forward, backward and optimizer step of every micro-batch; data fetching,
    logging, evaluation and checkpoint saves fall outside)."""

    def __init__(self) -> None:
        self.first_step = 0
        self.seconds = self.all_seconds = 0.0
        self.tokens = self.all_tokens = self.steps = self.all_steps = 0
        self._begin = 0.0
        self._seen = 0

    def begin(self, seen: int) -> None:
        self._begin, self._seen = _sync(), seen

    def end(self, step: int, seen: int) -> None:
        seconds, tokens = _sync() - self._begin, seen - self._seen
        self.all_seconds, self.all_tokens, self.all_steps = self.all_seconds + seconds, self.all_tokens + tokens, \
            self.all_steps + 1
        if step - self.first_step > WARMUP_STEPS:
            self.seconds, self.tokens, self.steps = self.seconds + seconds, self.tokens + tokens, self.steps + 1

    def summary(self, speed: Speed) -> dict:
        """summary.json's `throughput` (a run too short for a timed part reports all of its steps)."""
        timed = self.steps > 0
        seconds, tokens = (self.seconds, self.tokens) if timed else (self.all_seconds, self.all_tokens)
        per_s = round(tokens / seconds, 1) if seconds > 0 and tokens else None
        return {"tokens_per_s": per_s, "tokens_per_s_per_device": speed.per_device(per_s),
                "mfu": speed.mfu(speed.per_device(per_s)), "tokens": tokens, "step_seconds": round(seconds, 3),
                "timed_steps": self.steps if timed else self.all_steps, "warmup_steps": WARMUP_STEPS if timed else 0,
                "world_size": speed.world, "device": speed.device, "flops_per_token": speed.flops_per_token,
                "peak_tflops_per_device": speed.peak_flops / 1e12 if speed.peak_flops else None,
                **speed.facts, **({"mfu_note": speed.note} if speed.note else {})}


def metrics_callback(out: Path, tags: dict | None = None, speed: Speed | None = None) -> Any:
    """A TrainerCallback writing metrics.jsonl (the schema is in the README); `last_row` feeds the display and
    `throughput()` gives summary.json's run-level figures."""
    from transformers import TrainerCallback

    speed = speed or Speed()

    class MetricsWriter(TrainerCallback):
        def __init__(self) -> None:
            self.last_row: dict | None = None
            self.clock = StepClock()
            self._start = self._last_time = time.perf_counter()
            self._last_seen = 0

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self._start = self._last_time = time.perf_counter()
            self._last_seen = state.num_input_tokens_seen
            self.clock.first_step = state.global_step

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.clock.begin(state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            self.clock.end(state.global_step, state.num_input_tokens_seen)
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_log = True  # the last step is always a row: "final loss" is the end's, not the
                # last multiple of logging_steps (3 steps at logging_steps 10 reported step 1's loss)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if not state.is_world_process_zero or not logs or "train_runtime" in logs and "loss" not in logs:
                return  # the end-of-training summary event: its numbers are in summary.json
            row = {**(tags or {}), "step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
            row.update({k: v for k, v in logs.items() if isinstance(v, (int, float)) and k not in DROPPED_KEYS})
            now, seen = time.perf_counter(), state.num_input_tokens_seen
            if "loss" in logs:
                row.update(self._throughput(now, seen))
            allocated, reserved = peak_memory()
            row.update(elapsed_s=round(now - self._start, 2), peak_mem_gb=allocated, peak_mem_reserved_gb=reserved)
            self.last_row = row  # the display shows a non-finite value as it is (nan, inf)
            append_line(out / METRICS, json_row(row))

        def _throughput(self, now: float, seen: int) -> dict:
            per_s = round((seen - self._last_seen) / (now - self._last_time), 1) \
                if seen and now > self._last_time else None
            self._last_time, self._last_seen = now, seen
            per_device = speed.per_device(per_s)
            return {"tokens_seen": seen or None, "tokens_per_s": per_s, "tokens_per_s_per_device": per_device,
                    "mfu": speed.mfu(per_device)}

        def throughput(self) -> dict:
            return self.clock.summary(speed)

    return MetricsWriter()


def json_row(row: dict) -> str:
    """A metrics.jsonl line: strict JSON, so a value that is not finite (a diverged step's NaN or inf, which
    `json.dumps` writes as the bare tokens `NaN` / `Infinity` that strict parsers reject) is written as null, and
    the row's `non_finite` key says which keys those were and what they held ("nan", "inf", "-inf")."""
    bad = {k: str(v) for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        row = {**{k: None if k in bad else v for k, v in row.items()}, "non_finite": bad}
    return json.dumps(row, allow_nan=False)


def final_train_loss(out: Path) -> float | None:
    path = out / METRICS
    if not path.exists():
        return None
    losses = [json.loads(ln)["loss"] for ln in path.read_text().splitlines() if '"loss"' in ln]
    last = losses[-1] if losses else None  # null: a loss that was not finite
    return last if isinstance(last, (int, float)) and math.isfinite(last) else None  # never a loss that was not seen
