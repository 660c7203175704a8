"""The one training display: a progress bar with ETA on a terminal, and one aligned line per logging step.

It replaces transformers' ProgressCallback/PrinterCallback (tqdm bars and `{'loss': '6.298', ...}` dict lines).
Lines are built from the metrics.jsonl row (`metrics.metrics_callback`), so the console and the file agree.
On a terminal, rich draws the bar below the lines; redirected to a file or pipe, there is no bar and the lines
are plain text (no carriage returns or cursor codes).
"""

from __future__ import annotations

from typing import Any

from tunekit.ui import console

# metrics row key -> short label, in display order; kind-specific keys (DPO rewards, GRPO reward) when present
TRAIN_COLUMNS = (("loss", "loss", "{:.4f}"), ("learning_rate", "lr", "{:.2e}"), ("grad_norm", "grad", "{:.3f}"),
                 ("rewards/accuracies", "reward_acc", "{:.3f}"), ("rewards/margins", "margin", "{:.3f}"),
                 ("reward", "reward", "{:.3f}"), ("objective/scores", "reward", "{:.3f}"),
                 ("tokens_per_s", "tok/s", "{:,.0f}"),
                 ("peak_mem_gb", "mem", "{:.2f} GB"))
EVAL_COLUMNS = (("eval_loss", "eval_loss", "{:.4f}"), ("eval_rewards/accuracies", "eval_reward_acc", "{:.3f}"),
                ("eval_mean_token_accuracy", "eval_token_acc", "{:.3f}"))


def format_row(row: dict, max_steps: int) -> str:
    """`step   10/150  loss 3.9550  lr 1.87e-03  grad 1.785  tok/s 297  mem 0.41 GB  0:16` (eval rows likewise)."""
    width = len(str(max_steps))
    parts = [f"{row.get('stage', '') + ' ' if row.get('stage') else ''}step {row['step']:>{width}}/{max_steps}"]
    columns = EVAL_COLUMNS if "eval_loss" in row else TRAIN_COLUMNS
    for key, label, fmt in columns:
        if row.get(key) is not None:
            parts.append(f"{label} {fmt.format(row[key]):>8}")
    minutes, seconds = divmod(int(row.get("elapsed_s", 0)), 60)
    parts.append(f"{minutes}:{seconds:02d}")
    return "  ".join(parts)


def attach(trainer: Any, metrics_writer: Any, title: str = "train") -> None:
    """Swap the trainer's default progress/printing callbacks for tunekit's display."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_display_callback(metrics_writer, title))


def _display_callback(metrics_writer: Any, title: str) -> Any:
    from transformers import TrainerCallback

    class TrainingDisplay(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Any = None
            self.task: Any = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            if not state.is_world_process_zero or not console.is_terminal or console.quiet:
                return
            import rich.progress as rp

            self.progress = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                                        rp.TimeElapsedColumn(), rp.TextColumn("eta"), rp.TimeRemainingColumn(),
                                        console=console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(title, total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            row = metrics_writer.last_row
            if state.is_world_process_zero and row is not None and row.get("step") == state.global_step:
                console.print(format_row(row, state.max_steps), markup=False)
                metrics_writer.last_row = None  # printed once

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return TrainingDisplay()
