"""--resume: which checkpoint a run goes on from, and what it records when.

- When the run opens (`verify_checkpoints`, rank 0, before anything is written): every checkpoint newer than the
  newest complete one (its manifest's sizes and sha256) is set aside to checkpoints/torn/ with a notice; when none
  is left, --resume is refused (it used to train from step 0 as if resumed).
- Per stage (`resume_point`): the latest checkpoint; metrics logged after it are dropped (they come again).
- While the trainer loads it (`loading`): an error is a UserError naming the checkpoint and the recipe changes
  --allow-changes let through (a method of another shape cannot load it).
- Once it has loaded (`start_callback`, at on_train_begin): the run dir's record of the resume is written
  (`run_dir.ResumeRecord`), and a checkpoint at the last step of the schedule ends the stage with no step trained:
  final/ is written from it.
- Each checkpoint carries the training loss (and TRL's per-step metrics) of the steps since the last logged row
  (`log_carry`), so the first row logged after a resume averages the same steps as in an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit import checkpoints, run_dir
from tunekit.errors import RunStopped, UserError
from tunekit.launch import rules, runtime
from tunekit.ui import console

if TYPE_CHECKING:
    from tunekit.trainers.stage import RunInputs, Stage


def verify_checkpoints(out: Path) -> None:
    """Check the checkpoints of the run (and of its unfinished stages) against their manifests, sha256 included;
    set aside the newer ones that fail. Refused when that leaves nothing to go on from."""
    stages = [d for d in sorted((out / run_dir.STAGES).glob("*")) if d.is_dir() and not (d / "stage.json").is_file()]
    moved = []
    for d in [out, *stages]:
        for torn, why in checkpoints.torn_checkpoints(d, deep=True):
            aside = checkpoints.set_aside(torn)
            console.print(f"[yellow]notice:[/] {torn.name} is incomplete ({why}); set aside as {aside}")
            moved.append((torn, why, aside))
    if moved and not run_dir.has_progress(out):
        reasons = "; ".join(f"{torn.name}: {why}" for torn, why, _ in moved)
        raise UserError(f"--resume: no usable checkpoint (all {len(moved)} set aside to {moved[0][2].parent}: "
                        f"{reasons}); start again with --overwrite")


def resume_point(stage: Stage, inputs: RunInputs) -> Path | None:
    """The stage's latest complete checkpoint under --resume (checked by `verify_checkpoints`); metrics logged
    after it are dropped (they come again)."""
    if not inputs.resume:
        return None
    runtime.barrier()  # rank 0 checked and set aside checkpoints before the process group existed; a rank on
    # another node may get here first (the data stage waits for each node's own first rank only)
    checkpoint = checkpoints.latest_checkpoint(stage.dir)
    name = stage.tags.get("stage")
    if checkpoint is None:
        if stage.dir != inputs.out:  # a later stage not saved yet: rows it logged before the stop come again
            if runtime.is_main_process():
                run_dir.truncate_metrics(inputs.out, 0, stage=name)
            console.print(f"{name}: no checkpoint of this stage to resume from; starting it at step 0")
        return None
    rules.check_resume(checkpoint, runtime.world_size())
    if runtime.is_main_process():
        run_dir.truncate_metrics(inputs.out, checkpoints.checkpoint_step(checkpoint), stage=name)
    console.print(f"{name + ': ' if name else ''}resuming from {checkpoint}")
    return checkpoint


class _AtEnd(Exception):  # noqa: N818 - a signal between the callback and `train`, not an error
    """The checkpoint is the schedule's last step. The Trainer's loop first checks should_training_stop after a
    step, so it would train one more (on a new batch); no hook ends a run before its first step but an exception."""


def start_callback(checkpoint: Path | None, header: run_dir.ResumeRecord | None) -> Any:
    """A TrainerCallback for the moment the checkpoint has loaded (on_train_begin): write the resume's record, and
    end the stage at once when the checkpoint is the last step (`train_from` catches that)."""
    from transformers import TrainerCallback

    class ResumeStart(TrainerCallback):
        began = False  # whether the checkpoint loaded (`loading`)

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.began = True
            step, end = state.global_step, state.max_steps
            if checkpoint is not None and step > end:
                raise UserError(f"--resume: {checkpoint} is past the end of this recipe's training (step {step}; it "
                                f"trains {end} steps): raise trainer.max_steps (or num_epochs) to go on from it, or "
                                "start again with --overwrite")
            if header is not None:
                header.commit(checkpoint)
            if checkpoint is not None and step == end:
                console.print(f"{checkpoint.name} is the end of training (step {step} of {end}): no step to train; "
                              "writing final/ from it")
                raise _AtEnd

    return ResumeStart()


def resumed_schedule_callback() -> Any:
    """A TrainerCallback that, when a run resumes, sets each optimizer group's learning rate to what the schedule
    gives at the checkpoint's step. transformers restores the rate the previous schedule left in the optimizer and
    recomputes it only after the first resumed step: after `--resume` with another trainer.max_steps that step ran
    at the old schedule's last rate (0 at the end of a decaying one), then jumped onto the new curve."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import TrainerCallback

    class ResumedSchedule(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):  # noqa: ANN001
            sched = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
            if state.global_step == 0 or optimizer is None or not isinstance(sched, LambdaLR):
                return
            for group, base, lr_at in zip(optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * lr_at(sched.last_epoch)
            sched._last_lr = [group["lr"] for group in optimizer.param_groups]  # what the step logs

    return ResumedSchedule()


LOG_CARRY = "tunekit-log-carry.json"


def log_carry(checkpoint: Path | None) -> Any:
    """A TrainerCallback (its `trainer` set once the trainer exists) that writes into each checkpoint the loss summed
    over the steps since the last logged row, and after resuming from `checkpoint` puts it back. transformers starts
    the sum at 0 on resume: with logging_steps 10 and a checkpoint at step 15, the row at step 20 averaged steps
    16-20 instead of 11-20. Placed before the manifest writer, so the manifest lists the file."""
    from transformers import TrainerCallback

    class LogCarry(TrainerCallback):
        trainer: Any = None

        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            t = self.trainer
            if t is None or not hasattr(t, "_tr_loss") or not hasattr(t, "_globalstep_last_logged"):
                return
            loss = _mean_over_processes(t._tr_loss.detach().float().clone())
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():
                metrics = getattr(t, "_metrics", {}).get("train", {})  # TRL's per-step values, gathered already
                run_dir.write_json(ckpt / LOG_CARRY, {
                    "step": state.global_step, "last_logged": t._globalstep_last_logged, "loss_sum": loss,
                    "metrics": {k: [float(x) for x in v] for k, v in metrics.items()}})

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            t, path = self.trainer, checkpoint / LOG_CARRY if checkpoint else None
            if t is None or path is None or not path.is_file() or not hasattr(t, "_tr_loss"):
                return
            carried = json.loads(path.read_text())
            if carried.get("step") != state.global_step:
                return
            t._tr_loss += carried["loss_sum"]
            t._globalstep_last_logged = carried["last_logged"]
            for key, values in carried.get("metrics", {}).items():
                if isinstance(getattr(t, "_metrics", None), dict) and "train" in t._metrics:
                    t._metrics["train"][key][:0] = values

    return LogCarry()


def _mean_over_processes(value: Any) -> float:
    """The mean of a 0-d tensor over the processes (transformers logs the mean of every rank's loss sum)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / dist.get_world_size()
    return float(value)


def train_from(trainer: Any, checkpoint: Path | None) -> Any | None:
    """`trainer.train()` from the checkpoint; None when the checkpoint is the last step (no step trained)."""
    try:
        return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except _AtEnd:
        trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        return None


@contextlib.contextmanager
def loading(checkpoint: Path | None, start: Any, header: run_dir.ResumeRecord | None) -> Iterator[None]:
    """An error while the trainer loads the checkpoint (before `start` saw training begin) is a UserError naming
    the checkpoint, what failed, and the recipe changes that may be why."""
    try:
        yield
    except (UserError, RunStopped):
        raise
    except Exception as e:
        if checkpoint is None or start.began or "OutOfMemory" in type(e).__name__:
            raise
        raise UserError(_load_failure(checkpoint, e, header)) from e


def _load_failure(checkpoint: Path, e: Exception, header: run_dir.ResumeRecord | None) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    what = f"{type(e).__name__}: {' '.join(lines[:2])[:400]}".rstrip(".")
    text = f"--resume: {checkpoint} cannot be loaded with this recipe ({what})."
    if header is None:  # another rank than 0: rank 0 says what changed
        return text
    changed = {k: v for k, v in header.recipe_changes.items() if not k.startswith(run_dir.MAY_CHANGE)}
    if changed:
        diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        return (f"{text} --allow-changes let through {diff}: a change of the model or of the method's shape (such "
                "as method.r or target_modules) cannot go on from the run's checkpoints. Restore it, or start a new "
                "run with it (another output.dir, or --overwrite). The run dir was left as it was.")
    unchecked = "" if (checkpoint / checkpoints.MANIFEST).is_file() else " (it has no manifest to check its files with)"
    return (f"{text} Its files may be damaged{unchecked}, or written by other library versions (versions.json): "
            f"move {checkpoint} away to resume from the one before, or start again with --overwrite. The run dir "
            "was left as it was.")
