"""Settings every trainer kind shares: recipe optimisation fields -> TrainingArguments keyword arguments."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import UserError
from tunekit.launch.engines import training_kwargs as launch_kwargs
from tunekit.model.load import attention

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe
    from tunekit.trainers.optim_schema import OptimSettings


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


# ------------------------------------------------------------------------------------------------ fast paths
# Each fast path is a recipe key whose default suits the device: resolved here (training_kwargs, sft.build) and
# recorded in summary.json (`fast_paths`); what cannot run on this machine is refused when `tunekit train` starts
# (check_fast_paths), as `tunekit validate` stays machine-independent. docs/performance.md lists them.

LIGER_ON_CPU = ("trainer.kernels: liger needs a CUDA GPU (Liger's kernels are Triton GPU kernels) and this machine "
                "has none. Instead: set trainer.kernels: auto (none on CPU, liger on a GPU with liger-kernel) or none")
LIGER_MISSING = ("trainer.kernels: liger needs the liger-kernel package, which is not installed: pip install "
                 "'tunekit[gpu]' (or pip install liger-kernel), or set trainer.kernels: auto or none")
OFFLOAD_ON_CPU = ("trainer.activation_offload: true needs a GPU: it moves checkpointed activations from GPU memory to "
                  "pinned CPU memory (which torch allocates only with an accelerator present), and on this CPU-only "
                  "machine they already live in CPU memory. Instead: set trainer.activation_offload: false (keep "
                  "gradient_checkpointing), or run on a GPU machine")


def cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_fast_paths(trainer: Any) -> None:
    """The fast paths the recipe's trainer section asks for (each stage's, for reft) can run on this machine (else a
    UserError saying what to do)."""
    for stage in ("warmup", "rl"):
        if hasattr(trainer, stage):
            check_fast_paths(getattr(trainer, stage))
    if getattr(trainer, "kernels", "none") == "liger":
        if not cuda():
            raise UserError(LIGER_ON_CPU)
        if importlib.util.find_spec("liger_kernel") is None:
            raise UserError(LIGER_MISSING)
    if getattr(trainer, "activation_offload", False) and not cuda():
        raise UserError(OFFLOAD_ON_CPU)


def resolved_optim(optim: str, on_cuda: bool | None = None) -> str:
    """`auto`: torch's fused AdamW on a CUDA GPU (one kernel per step instead of several per parameter group),
    `adamw_torch` elsewhere (transformers 5 defaults to the fused one everywhere; tunekit keeps CPU runs on the
    plain one its CPU tests and parity checks were made with). `on_cuda`: for that device instead of this machine's
    (`tunekit plan`)."""
    if optim != "auto":
        return optim
    return "adamw_torch_fused" if (cuda() if on_cuda is None else on_cuda) else "adamw_torch"


def checkpointing_kwargs(t: OptimSettings) -> dict | None:
    """Non-reentrant checkpointing, said explicitly (transformers 5.24 defaults to it too; reentrant checkpointing
    needs inputs that require grad and breaks with frozen embeddings), with `offload` when asked for."""
    if not t.gradient_checkpointing:
        return None
    return {"use_reentrant": False, **({"offload": True} if t.activation_offload else {})}


def liger_supports(model_type: str | None) -> bool:
    """liger-kernel is installed and has kernels for this architecture."""
    if importlib.util.find_spec("liger_kernel") is None or not model_type:
        return False
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def resolved_kernels(kernels: str, model_type: str | None) -> str:
    """`auto`: liger on a CUDA GPU when liger-kernel is installed and supports the architecture, else none."""
    if kernels == "liger" and not liger_supports(model_type):
        raise UserError(f"trainer.kernels: liger has no kernels for model type `{model_type}` in the installed "
                        "liger-kernel; set trainer.kernels: auto or none")
    if kernels == "auto":
        return "liger" if cuda() and liger_supports(model_type) else "none"
    return kernels


def fast_paths(recipe: Recipe, model_type: str | None = None, attn: str | None = None) -> dict:
    """Which fast paths this run uses (summary.json `fast_paths`, so a benchmark row says what ran); `attn`: the
    attention the model was loaded with (`auto` may fall back to eager: `model.load.load_model`)."""
    t, d = recipe.trainer, recipe.data
    return {"optim": resolved_optim(t.optim) if hasattr(t, "optim") else None,
            "compile": getattr(t, "compile", False),
            "kernels": resolved_kernels(t.kernels, model_type) if hasattr(t, "kernels") else "none",
            "fused_lm_head": getattr(t, "kind", None) == "sft",  # TRL's SFTTrainer computes the loss from tiles of the LM head
            "attn_implementation": attn or attention(recipe.model),
            "packing": d.packing, "padding_free": d.packing or d.padding_free, "tokens_per_batch": d.tokens_per_batch,
            "gradient_checkpointing": getattr(t, "gradient_checkpointing", False),
            "activation_offload": getattr(t, "activation_offload", False)}


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
        optim=resolved_optim(t.optim),
        seed=t.seed,
        data_seed=recipe.data.data_seed(t.seed),  # the sampler's order: data.shuffle_seed when set (it used t.seed)
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs=checkpointing_kwargs(t),
        torch_compile=t.compile,
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


def add_tokens_seen(trainer: Any, count: Any) -> None:
    """Add `count` (this process's non-padding tokens of a micro-batch) to the trainer's `num_input_tokens_seen`,
    summed over the processes as transformers counts them (`include_num_input_tokens_seen="non_padding"`), for the
    trainers whose batches are not token ids (ORPO, CPO, online DPO, PPO): tokens/s and MFU come from this count.
    Every process calls it once per micro-batch (a collective)."""
    import torch

    n = torch.as_tensor(count, device=trainer.args.device, dtype=torch.int64)
    trainer.state.num_input_tokens_seen += int(trainer.accelerator.gather(n).sum().item())
