"""The recipe: one pydantic model per section, `extra="forbid"` everywhere.

Each section's cross-field rules live next to it. Data, method and trainer sections live in
their own packages (`tunekit/data/schema.py`, `tunekit/methods/schema.py`,
`tunekit/trainers/schema.py`) so each stage owns its options.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunekit.data.schema import DataConfig
from tunekit.eval.schema import EvalConfig
from tunekit.launch_schema import LaunchConfig
from tunekit.methods.schema import MethodConfig
from tunekit.recipe.base import Section
from tunekit.trainers.schema import TrainerConfig


class ModelConfig(Section):
    path: str = Field(
        description="Base model: a hub id (`org/name`), a local directory, or `builtin:NAME` for an offline "
        "tiny model (randomly initialised, for smoke tests only; see `tunekit/model/builtin.py`)."
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) of the model.")
    tokenizer: str | None = Field(
        default=None, description="Tokenizer to load if different from `path` (hub id or local directory)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Weight dtype. `auto`: bfloat16 on a GPU that supports it, float16 on older GPUs, float32 on CPU.",
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] = (
        Field(default="sdpa", description="Attention kernel passed to `from_pretrained`.")
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run Python code shipped with a hub model. Off by default: turn on only for models you trust.",
    )
    init_seed: int = Field(
        default=0, description="Seed for the random initialisation of `builtin:` models (ignored for real models)."
    )


class OutputConfig(Section):
    dir: str = Field(description="Run directory (relative paths resolve against the current directory).")
    save_steps: int = Field(
        default=0, ge=0, description="Write a resumable checkpoint every N optimizer steps (0: only at the end)."
    )
    save_total_limit: int | None = Field(
        default=None, ge=1, description="Keep at most this many checkpoints (oldest removed first); null keeps all."
    )
    overwrite: bool = Field(
        default=False,
        description="Allow writing into a non-empty run directory (its old contents are deleted). "
        "Without it, a non-empty directory is refused unless `--resume` is given.",
    )


class Recipe(Section):
    model: ModelConfig = Field(description="The base model and how to load it.")
    data: DataConfig = Field(description="Training and evaluation data, formatting and length policy.")
    method: MethodConfig = Field(description="How weights are trained: `full`, `lora`, ... (see `tunekit methods`).")
    trainer: TrainerConfig = Field(description="The training objective and optimisation settings.")
    output: OutputConfig = Field(description="Where the run writes checkpoints, metrics and the final model.")
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="Evaluation tasks and the report (see docs/eval-merge.md)."
    )
    launch: LaunchConfig = Field(
        default_factory=LaunchConfig, description="Processes, nodes and engine (DDP, DeepSpeed, FSDP2); see docs/scaling.md."
    )

    @model_validator(mode="after")
    def _check_eval_steps(self) -> Recipe:
        if getattr(self.trainer, "eval_steps", None) and not self.data.eval and not self.data.eval_fraction:
            raise ValueError("trainer.eval_steps is set but data has no eval split: add data.eval or data.eval_fraction")
        from tunekit.trainers.schema import check_data_formats

        check_data_formats(self.trainer.kind, [s.format for s in [*self.data.train, *self.data.eval]])
        if self.trainer.kind == "reft" and self.method.name in ("loreft", "lofit"):
            raise ValueError(f"method.name: {self.method.name} (representation interventions) cannot carry the reft "
                             "trainer's SFT warm-up into its RL stage; use lora, full or another weight method")
        if self.trainer.kind == "reft" and self.launch.world_size > 1:
            raise ValueError("trainer.kind reft runs its two stages in one process so far; set launch.nproc and "
                             "launch.nnodes to 1 (multi-process ReFT is not supported yet)")
        return self

    @model_validator(mode="after")
    def _check_launch_compatibility(self) -> Recipe:
        from tunekit.launch_rules import check

        check(self)  # the table in tunekit/launch_rules.py, rendered in docs/scaling.md
        return self
