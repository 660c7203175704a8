"""Settings every trainer kind shares: recipe optimisation fields -> TrainingArguments keyword arguments."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tunekit.errors import UserError
from tunekit.launch.engines import training_kwargs as launch_kwargs

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


# tracker -> (modules that provide it, pip package)
TRACKER_PACKAGES = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"), "wandb": (("wandb",), "wandb"),
            "mlflow": (("mlflow",), "mlflow"), "comet_ml": (("comet_ml",), "comet-ml"), "trackio": (("trackio",), "trackio")}
USER_TENSORBOARD_DIR = os.environ.get("TENSORBOARD_LOGGING_DIR")  # the user's own choice wins over the run dir


def check_trackers(report_to: list[str]) -> None:
    """Every tracker in trainer.report_to is installed (else transformers fails with a traceback mid-setup)."""
    missing = [t for t in report_to if not any(importlib.util.find_spec(m) for m in TRACKER_PACKAGES[t][0])]
    if missing:
        raise UserError(f"trainer.report_to: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                        f"installed: pip install {' '.join(TRACKER_PACKAGES[t][1] for t in missing)} (or remove "
                        f"{'it' if len(missing) == 1 else 'them'} from trainer.report_to)")


def tracker_dirs(report_to: list[str], stage_dir: Path) -> None:
    """TensorBoard event files go to `<run or stage dir>/tensorboard/` (transformers 5 reads the directory from
    TENSORBOARD_LOGGING_DIR; its default is a `runs/DATE_HOST` folder inside checkpoints/)."""
    if "tensorboard" in report_to and USER_TENSORBOARD_DIR is None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(stage_dir / "tensorboard")


def training_kwargs(recipe: Recipe, checkpoint_dir: str, has_eval: bool) -> dict:
    """TrainingArguments keywords from the recipe's trainer (optimisation), output (saving), model (precision)
    and launch (engine) sections."""
    import torch

    t, o = recipe.trainer, recipe.output
    tracker_dirs(list(t.report_to), Path(checkpoint_dir).parent)

    bf16 = recipe.model.dtype == "bfloat16" or (recipe.model.dtype == "auto" and torch.cuda.is_available()
                                                 and torch.cuda.is_bf16_supported())
    fp16 = recipe.model.dtype == "float16"
    return dict(
        output_dir=checkpoint_dir,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps else t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        seed=t.seed,
        data_seed=t.seed,
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a non-finite loss is logged as it is (tunekit.guards stops the run on it)
        eval_strategy="steps" if (has_eval and t.eval_steps) else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if o.save_steps else "no",
        save_steps=o.save_steps or 500,
        save_total_limit=o.save_total_limit,
        report_to=list(t.report_to) or "none",
        bf16=bf16,
        fp16=fp16,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **launch_kwargs(recipe.launch),  # DDP backend/timeout, DeepSpeed config, FSDP2 config
    )
