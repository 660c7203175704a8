"""Optimisation settings every trainer kind shares (the base of each `trainer:` model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunekit.recipe.base import Section

SCHEDULERS = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay",
]
TRACKERS = Literal["tensorboard", "wandb", "mlflow", "comet_ml", "trackio"]


class OptimSettings(Section):
    """Settings shared by every trainer kind."""

    num_epochs: float = Field(default=1.0, gt=0, description="Passes over the training data (ignored if max_steps > 0).")
    max_steps: int = Field(default=-1, description="Total optimizer steps (> 0); -1 trains for `num_epochs`.")
    per_device_batch_size: int = Field(default=8, ge=1, description="Examples per device per micro-batch.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(default=2.0e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: SCHEDULERS = Field(default="cosine", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    warmup_steps: int = Field(default=0, ge=0, description="Warm-up steps (overrides warmup_ratio when > 0).")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm (0 disables).")
    optim: str = Field(default="auto", description="Optimizer name as transformers knows it (`adamw_torch`, "
                       "`adamw_torch_fused`, `adamw_8bit`, `paged_adamw_8bit`, ...); `auto`: `adamw_torch_fused` "
                       "(torch's fused AdamW kernel) on a CUDA GPU, `adamw_torch` elsewhere; or `mezo` (kind sft only: "
                       "MeZO zeroth-order SGD, forward passes only; see docs/trainers.md).")
    seed: int = Field(default=0, description="Seed for initialisation of new weights, data order and dropout.")
    gradient_checkpointing: bool = Field(
        default=False, description="Activation checkpointing: keep only each decoder layer's input and recompute the "
        "layer in the backward pass (non-reentrant torch.utils.checkpoint; about one more forward per step).")
    activation_offload: bool = Field(
        default=False, description="With gradient_checkpointing: hold the checkpointed layer inputs in pinned CPU "
        "memory instead of GPU memory (frees layers x tokens x hidden x bytes; the step gets slower). Needs a CUDA GPU.")
    compile: bool = Field(
        default=False, description="torch.compile the model (inductor; transformers' `torch_compile`). The first steps "
        "pay the compile time, and new batch shapes recompile; pays off on long GPU runs. Off by default.")
    logging_steps: int = Field(default=10, ge=1, description="Log metrics every N optimizer steps.")
    eval_steps: int | None = Field(default=None, ge=1, description="Evaluate every N steps (needs eval data).")
    report_to: list[TRACKERS] = Field(
        default_factory=list, description="Experiment trackers (must be installed): tensorboard, wandb, mlflow, ..."
    )

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError(f"{v} steps trains nothing; give a positive number of optimizer steps, or -1 to "
                             "train for `num_epochs`")
        return v

    @model_validator(mode="after")
    def _warmup(self) -> OptimSettings:
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set warmup_ratio or warmup_steps, not both")
        if self.activation_offload and not self.gradient_checkpointing:
            raise ValueError("activation_offload moves the inputs activation checkpointing keeps to CPU memory; set "
                             "gradient_checkpointing: true as well, or remove activation_offload")
        return self
