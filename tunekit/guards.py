"""What stops a run early, and safely: a signal (SIGINT, SIGTERM) or divergence (a non-finite loss or gradient).

Signals: the first SIGINT/SIGTERM during training asks the trainer to stop at the end of the current optimizer step
and write a checkpoint there (`StopGuard.on_step_end`); the run then exits 130 (SIGINT) or 143 (SIGTERM) saying how
to resume. The same signal again aborts at once (the other one is taken as the same request: under torchrun a
Ctrl-C reaches the workers from the terminal and again as torchrun's SIGTERM). Before or after training (data stage, model loading, final save) a signal
aborts at once, as it would without tunekit.

Divergence: before each optimizer step the gradients are checked (a non-finite loss gives non-finite gradients), and
each logged loss / grad norm too (for engines whose gradients live outside the parameters, e.g. ZeRO). The first
non-finite value stops the run without saving that step: the last checkpoint stays the last good one, and nothing
is written to final/.

With several processes the stop flags are all-reduced at every step end, so every rank stops at the same step
(the save is collective).
"""

from __future__ import annotations

import contextlib
import errno
import math
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunekit.errors import RunStopped, UserError
from tunekit.run_dir import latest_checkpoint
from tunekit.ui import console

NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


class _SignalState:
    signum: int | None = None  # the first signal received while training
    training: bool = False


SIGNALS = _SignalState()


def _handle(signum: int, frame: Any) -> None:  # noqa: ARG001
    name = NAMES.get(signum, str(signum))
    if SIGNALS.training and SIGNALS.signum not in (None, signum):
        # Ctrl-C under torchrun: the terminal's SIGINT, then torchrun's SIGTERM as it shuts down: one request
        console.print(f"{name}: already stopping at the end of this step")
        return
    if not SIGNALS.training or SIGNALS.signum is not None:
        console.print(f"[red]{name}[/]: aborting at once" + (" (second signal)" if SIGNALS.signum else ""))
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise RunStopped(f"stopped by {name}", 128 + signum)
    SIGNALS.signum = signum
    console.print(f"[yellow]{name}[/]: stopping at the end of this step and writing a checkpoint "
                  "(send it again to abort at once)")


@contextlib.contextmanager
def signal_handlers() -> Iterator[None]:
    """SIGINT and SIGTERM go through `_handle` inside the block (main thread only); the previous handlers after."""
    import threading

    SIGNALS.signum, SIGNALS.training = None, False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in NAMES}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_callback(save_minutes: float = 0.0) -> Any:
    """A TrainerCallback that stops at a step boundary on a signal (saving) or on divergence (not saving), and
    saves when `save_minutes` passed since the last save (0: never by time)."""
    import time

    from transformers import TrainerCallback

    class StopGuard(TrainerCallback):
        def __init__(self) -> None:
            self.diverged: str | None = None  # what was not finite, and at which step
            self.last_save = time.monotonic()

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            SIGNALS.training = True
            self.last_save = time.monotonic()

        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            self.last_save = time.monotonic()

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            SIGNALS.training = False

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):  # noqa: ANN001
            if model is not None and self.diverged is None and not grads_finite(model):
                self.diverged = f"the gradient at step {state.global_step + 1} is not finite (nan or inf)"

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if self.diverged is None and isinstance(value, float) and not math.isfinite(value):
                    self.diverged = f"the logged {key} at step {state.global_step} is {value}"
            if self.diverged:
                control.should_training_stop, control.should_save = True, False

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            due = bool(save_minutes) and time.monotonic() - self.last_save >= save_minutes * 60
            signalled, diverged, due = agree([SIGNALS.signum is not None, self.diverged is not None, due], args)
            if diverged:
                self.diverged = self.diverged or f"another process diverged at step {state.global_step}"
                control.should_training_stop, control.should_save = True, False
            elif signalled:
                control.should_training_stop, control.should_save = True, True
            elif due:
                control.should_save = True

    return StopGuard()


def grads_finite(model: Any) -> bool:
    import torch

    # FSDP2 gradients are DTensors: each rank checks its own shard (the ranks' answers meet in `agree`)
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in (p.grad for p in model.parameters()) if g is not None]
    norms = [g.detach().float().norm() for g in grads if g.numel()]
    return not norms or bool(torch.isfinite(torch.stack(norms)).all())


def agree(flags: list[bool], args: Any) -> list[bool]:
    """The flags, all-reduced (max: any process) over the processes of a multi-process run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    import torch

    t = torch.tensor([float(f) for f in flags], device=args.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


@contextlib.contextmanager
def disk_full(checkpoint_dir: Path) -> Iterator[None]:
    """A full disk while training (a save, a log line) is a UserError naming the last complete checkpoint, which
    `--resume` uses (the torn one has no manifest)."""
    try:
        yield
    except Exception as e:  # OSError, torch's RuntimeError, safetensors' SafetensorError
        if not _out_of_space(e, checkpoint_dir):
            raise
        last = latest_checkpoint(checkpoint_dir.parent)
        raise UserError(f"the disk is full (writing under {checkpoint_dir}): free space, then --resume "
                        f"({'from ' + str(last) if last else 'no complete checkpoint yet'}; an incomplete newer one "
                        "is set aside)") from None


def _out_of_space(e: Exception, directory: Path) -> bool:
    """Whether a failed write ran out of disk. Most writers say so (ENOSPC, "No space left on device"), but torch's
    zip writer can fail with only "unexpected pos N vs M" when its first write hit the limit: then the filesystem's
    own free space decides (under 1 MiB left: full)."""
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):
        return True
    where = next((d for d in (directory, *directory.parents) if d.exists()), None)
    return where is not None and shutil.disk_usage(where).free < 1 << 20


def check_stopped(guard: Any, trainer: Any, checkpoint_dir: Path, learning_rate: float) -> None:
    """After `trainer.train()` returned: raise if it stopped early (divergence: UserError; a signal: RunStopped)."""
    step = trainer.state.global_step
    if guard.diverged:
        last = latest_checkpoint(checkpoint_dir.parent)
        keep, then = (f"the last good checkpoint is {last}", "start again (--overwrite) or continue from that "
                      "checkpoint with --resume --allow-changes trainer.learning_rate=LOWER") if last else (
            "no checkpoint was written before it", "start again with --overwrite")
        raise UserError(f"training diverged: {guard.diverged}. Nothing was written to final/; {keep}. Lower "
                        f"trainer.learning_rate (now {learning_rate:g}), add warm-up (trainer.warmup_steps) or keep "
                        f"trainer.max_grad_norm > 0; then {then}")
    if SIGNALS.signum is not None and step < trainer.state.max_steps:  # on the last step: finish normally
        name = NAMES.get(SIGNALS.signum, str(SIGNALS.signum))
        raise RunStopped(f"stopped by {name} at step {step}: checkpoint written to {checkpoint_dir}/checkpoint-{step}."
                         " Resume with the same command and --resume", 128 + SIGNALS.signum)
