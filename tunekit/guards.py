"""What stops a run early, and safely: a signal (SIGINT, SIGTERM) or divergence (a non-finite loss or gradient).

Signals, by phase of the run:
- before training (data stage, model loading) and while final/ is saved: a signal aborts at once, as it would
  without tunekit;
- during training: the first SIGINT/SIGTERM asks the trainer to stop at the end of the current optimizer step and
  write a checkpoint there (`StopGuard.on_step_end`); the run then exits 130 (SIGINT) or 143 (SIGTERM) saying how
  to resume. A second signal aborts at once, unless it is a repeat of the first request: in one plain process, a
  signal of the other kind; in a process started by torchrun/accelerate, any within `REPEAT_WINDOW_S` of the first
  (the scheduler signals every process and torchrun forwards its own copy: launch/signals.py);
- after training (final/ and summary.json written: the model card, `eval.run_after_train`): a signal stops the
  process there, saying that the run is complete and what did not run; exit 130/143.

Divergence: before each optimizer step the gradients are checked (a non-finite loss gives non-finite gradients), and
each logged loss / grad norm too (for engines whose gradients live outside the parameters, e.g. ZeRO). The first
non-finite value stops the run without saving that step: the last checkpoint stays the last good one, and nothing
is written to final/.

With several processes the stop flags, and which signal asked, are all-reduced at every step end, so every rank
stops at the same step (the save is collective) and takes it as a signal stop, also the ranks that never received
the signal; only rank 0 prints the stop line.
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from tunekit.checkpoints import latest_checkpoint
from tunekit.errors import RunStopped, UserError
from tunekit.files import free_bytes
from tunekit.launch import runtime
from tunekit.launch.signals import NAMES, REPEAT_WINDOW_S, record_stop, signal_name
from tunekit.ui import console


class _SignalState:
    signum: int | None = None  # the first signal received while training or after it: a stop request
    at: float = 0.0  # when it came (time.monotonic())
    phase: str = "setup"  # setup | training | saving (final/, summary.json) | after (model card, eval) | exiting
    held: bool = False  # after training, while the process group ends and the model card is written
    checkpoints: Path | None = None  # the checkpoint dir of the stage training now
    after: tuple[Path, bool] | None = None  # after training: the run dir; whether eval.run_after_train is on


SIGNALS = _SignalState()


def _handle(signum: int, frame: Any) -> None:  # noqa: ARG001
    name, phase = signal_name(signum), SIGNALS.phase
    if phase == "exiting":  # `tunekit train` returned: the process is ending
        _exit_now(signum)
    if phase == "after":
        SIGNALS.signum = SIGNALS.signum or signum
        if not SIGNALS.held:
            raise stopped(_after_message(signum), signum)
        return
    if SIGNALS.signum is not None and _repeat(signum):
        console.print(f"{name}: already stopping" + (" at the end of this step" if phase == "training" else ""))
        return
    if phase == "training" and SIGNALS.signum is None:
        SIGNALS.signum, SIGNALS.at = signum, time.monotonic()
        again = (f"; repeats within {REPEAT_WINDOW_S:g} s are taken as this request" if runtime.under_launcher()
                 else "")
        console.print(f"[yellow]{name}[/]: stopping at the end of this step and writing a checkpoint "
                      f"(send it again to abort at once{again})")
        return
    second = SIGNALS.signum is not None
    console.print(f"[red]{name}[/]: aborting at once" + (" (second signal)" if second else ""))
    # not recorded for the parent (launch/signals.py): torchrun also sends SIGTERM to the ranks left when one failed
    if phase == "training":
        last = latest_checkpoint(SIGNALS.checkpoints.parent) if SIGNALS.checkpoints else None
        raise RunStopped(f"{runtime.rank_prefix()}stopped by {name} (second signal) during a step, without saving "
                         f"it: {f'--resume continues from {last}' if last else 'no checkpoint was written yet'}",
                         128 + signum)
    if signum == signal.SIGINT and not second:
        raise KeyboardInterrupt
    raise RunStopped(f"{runtime.rank_prefix()}stopped by {name}", 128 + signum)


def _repeat(signum: int) -> bool:
    """Whether a signal after the first stop request is that same request (see the module docstring)."""
    if runtime.under_launcher():
        return time.monotonic() - SIGNALS.at < REPEAT_WINDOW_S
    return signum != SIGNALS.signum


def _exit_now(signum: int) -> NoReturn:
    """End a process whose run is complete, saying so: rank 0 prints, output is flushed; exit 128 + signum (0 in a
    worker of a relaunched run: the parent exits with it)."""
    import os
    import sys

    relaunched = record_stop(signum)
    if runtime.is_main_process():
        console.print(_after_message(signum, eval_left=False))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0 if relaunched else 128 + signum)


def _after_message(signum: int, eval_left: bool = True) -> str:
    out, eval_after = SIGNALS.after or (Path("."), False)
    left = (f"; the eval (eval.run_after_train) did not run: run `tunekit eval {out}`" if eval_after and eval_left
            else "")
    return (f"stopped by {signal_name(signum)} after training: the run is complete ({out / 'final'}, "
            f"summary.json){left}")


def stopped(message: str, signum: int) -> RunStopped:
    """The end of a process that stops on `signum` with every rank (an agreed stop, or after training): the
    message on rank 0 only; exit 128 + signum, or 0 in a worker of a relaunched run, whose parent exits with it
    (launch/signals.py: torchrun would otherwise take it as failed and kill the ranks still saving)."""
    relaunched = record_stop(signum)
    return RunStopped(message if runtime.is_main_process() else "", 0 if relaunched else 128 + signum)


@contextlib.contextmanager
def signal_handlers(until_exit: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM go through `_handle` inside the block (main thread only); the previous handlers after,
    except with `until_exit` (the CLI) once the run completed: then they stay for the rest of the process, and a
    signal says that the run is complete and ends it (exit 130/143) instead of killing it without a word."""
    import threading

    SIGNALS.signum, SIGNALS.phase, SIGNALS.held, SIGNALS.checkpoints, SIGNALS.after = None, "setup", False, None, None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in NAMES}
    completed = False
    try:
        yield
        completed = until_exit and SIGNALS.phase == "after"
    finally:
        if completed:
            SIGNALS.phase = "exiting"
        else:
            for s, handler in previous.items():
                signal.signal(s, handler)


@contextlib.contextmanager
def after_training(out: Path, eval_after: bool) -> Iterator[None]:
    """Around the end of the process group and the model card, on every rank, once final/ and summary.json are
    written: signals wait until the block ends; then a signal that came during the last step (on any rank) or
    while waiting stops the process, saying the run is complete and what did not run. After the block (the eval)
    a signal stops it at once."""
    SIGNALS.phase, SIGNALS.held, SIGNALS.after = "after", True, (out, eval_after)
    try:
        (pending,) = agree([float(SIGNALS.signum or 0)])
        yield
    finally:
        SIGNALS.held = False
    signum = SIGNALS.signum = int(pending) or SIGNALS.signum
    if signum:
        raise stopped(_after_message(signum), signum)


def stop_callback(save_minutes: float = 0.0) -> Any:
    """A TrainerCallback that stops at a step boundary on a signal (saving) or on divergence (not saving), and
    saves when `save_minutes` passed since the last save (0: never by time)."""
    from transformers import TrainerCallback

    class StopGuard(TrainerCallback):
        def __init__(self) -> None:
            self.diverged: str | None = None  # what was not finite, and at which step
            self.stopped_by: int | None = None  # the signal the ranks agreed to stop on
            self.last_save = time.monotonic()
            self.dead_warned = False  # the zero-gradient warning is given once

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            SIGNALS.phase, SIGNALS.checkpoints = "training", Path(args.output_dir)
            self.last_save = time.monotonic()

        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            self.last_save = time.monotonic()

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            SIGNALS.phase = "saving"

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
            elif not self.dead_warned and _dead(logs or {}):
                self.dead_warned = True
                console.print(f"[yellow]warning:[/] step {state.global_step}: the gradient is exactly 0 while the loss "
                              f"is {logs['loss']:.4g}: no trainable weight changes any more. After a loss spike this "
                              f"means the model has saturated (trainer.learning_rate {args.learning_rate:g} is too high "
                              "for this method: lower it, add trainer.warmup_steps, keep trainer.max_grad_norm > 0) "
                              "and the rest of the run trains nothing; stop it (Ctrl-C saves a checkpoint)")

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            due = bool(save_minutes) and time.monotonic() - self.last_save >= save_minutes * 60
            signum, diverged, due = agree([float(SIGNALS.signum or 0), self.diverged is not None, due], args.device)
            if diverged:
                self.diverged = self.diverged or f"another process diverged at step {state.global_step}"
                control.should_training_stop, control.should_save = True, False
            elif signum:
                self.stopped_by = int(signum)
                if SIGNALS.signum is None:  # another rank got it: copies reaching this one later are repeats
                    SIGNALS.signum, SIGNALS.at = self.stopped_by, time.monotonic()
                control.should_training_stop, control.should_save = True, True
            elif due:
                control.should_save = True

    return StopGuard()


def _dead(logs: dict) -> bool:
    """A logged training row whose gradient norm is exactly 0 with a positive loss: no trainable weight gets a
    gradient (a saturated model; a frozen one is refused before training)."""
    grad, loss = logs.get("grad_norm"), logs.get("loss")
    return isinstance(grad, (int, float)) and grad == 0 and isinstance(loss, (int, float)) and loss > 0


def grads_finite(model: Any) -> bool:
    import torch

    # FSDP2 gradients are DTensors: each rank checks its own shard (the ranks' answers meet in `agree`)
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in (p.grad for p in model.parameters()) if g is not None]
    norms = [g.detach().float().norm() for g in grads if g.numel()]
    return not norms or bool(torch.isfinite(torch.stack(norms)).all())


def agree(values: list[float], device: Any = None) -> list[float]:
    """The values' maximum over the processes of a multi-process run (as they are in one process); a flag is
    raised when any process raised it. `device`: where the collective runs (default: the backend's)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    import torch

    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(v) for v in values], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


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
    return free_bytes(directory) < 1 << 20


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
    if guard.stopped_by and step < trainer.state.max_steps:  # on the last step: finish normally
        runtime.shutdown()  # every rank's part of the checkpoint is written (and its manifest) before any exits
        name = signal_name(guard.stopped_by)
        raise stopped(f"stopped by {name} at step {step}: checkpoint written to {checkpoint_dir}/checkpoint-{step}. "
                      "Resume with the same command and --resume", guard.stopped_by)
