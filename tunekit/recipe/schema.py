"""The recipe: one pydantic model per section, `extra="forbid"` everywhere.

Each section's cross-field rules live next to it. Each stage's section lives in its own package
(`tunekit/model/schema.py`, `data/schema.py`, `methods/schema.py`, `trainers/schema.py`,
`launch/schema.py`, `eval/schema.py`) so each stage owns its options; this module holds the output
section and the rules that span sections.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from tunekit.data.schema import DataConfig
from tunekit.eval.schema import EvalConfig
from tunekit.launch.rules import check as check_launch_rules
from tunekit.launch.schema import LaunchConfig
from tunekit.methods.schema import MethodConfig
from tunekit.model.schema import ModelConfig
from tunekit.recipe.base import PathStr, Section
from tunekit.trainers.schema import TrainerConfig, check_data_formats, check_packing, check_sft_options


class OutputConfig(Section):
    dir: PathStr = Field(min_length=1, description="Run directory (relative paths resolve against the current "
                         "directory; `~` is your home).")
    save_steps: int = Field(
        default=0, ge=0, description="Write a resumable checkpoint every N optimizer steps (and at the end); 0: by "
        "time only (save_minutes)."
    )
    save_minutes: float = Field(
        default=30.0, ge=0,
        description="Also write a checkpoint when this many minutes passed since the last one (0: off), so every "
        "long run is resumable without choosing save_steps. SIGINT/SIGTERM write one too. Each checkpoint ends "
        "with tunekit-manifest.json (its files' sizes and sha256); --resume skips a newer checkpoint that does not match it.",
    )
    save_total_limit: int | None = Field(
        default=None, ge=1, description="Keep at most this many checkpoints (oldest removed first); null keeps all."
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_overwrite(cls, data: object) -> object:
        # `overwrite` was removed: a recipe is copied and rerun, so deleting a run is asked for on the command line
        if isinstance(data, dict) and data.get("overwrite") is False:  # runs written before the removal say so
            data = {k: v for k, v in data.items() if k != "overwrite"}
        if isinstance(data, dict) and "overwrite" in data:
            raise ValueError("output.overwrite was removed: a recipe that is copied or rerun must not delete a run "
                             "directory by itself. Pass --overwrite to `tunekit train` instead, and delete the key")
        return data


def check_mezo(r: Recipe) -> None:
    """MeZO runs in tunekit's SFT trainer, one process, one micro-batch per step."""
    if r.trainer.kind != "sft":
        raise ValueError(f"trainer.optim: mezo runs with trainer.kind sft (not `{r.trainer.kind}`)")
    if r.trainer.gradient_accumulation_steps != 1:
        raise ValueError("trainer.optim: mezo estimates one projected gradient per batch; set "
                         "trainer.gradient_accumulation_steps: 1 (use a larger per_device_batch_size)")
    if r.launch.world_size > 1:
        raise ValueError("trainer.optim: mezo runs in one process so far; set launch.nproc and launch.nnodes to 1")
    if r.method.name in ("qlora", "galore"):
        raise ValueError(f"trainer.optim: mezo perturbs full-precision trainable weights with its own update; "
                         f"method `{r.method.name}` is not supported (use full, lora or another adapter)")


def check_token_budget(r: Recipe) -> None:
    """data.tokens_per_batch sets trainer.per_device_batch_size: tokens_per_batch // max_length rows (packed: the
    rows per batch; unpacked: the most rows a batch can hold, which the planner and the eval batch size use)."""
    budget, max_length = r.data.tokens_per_batch, r.data.max_length
    if budget is None:
        return
    if r.trainer.kind != "sft":
        raise ValueError(f"data.tokens_per_batch: token-budget batches are built for trainer.kind sft; the "
                         f"{r.trainer.kind} trainer batches pairs or prompts by rows (use per_device_batch_size)")
    if budget < max_length:
        raise ValueError(f"data.tokens_per_batch ({budget}) is below data.max_length ({max_length}): a row of "
                         f"max_length tokens would not fit in a batch; raise it to at least {max_length}")
    rows = budget // max_length
    given = r.trainer.per_device_batch_size
    if "per_device_batch_size" in r.trainer.model_fields_set and given != rows:
        raise ValueError(f"trainer.per_device_batch_size ({given}) and data.tokens_per_batch ({budget}) both size "
                         f"the batch; tokens_per_batch sets it to {budget} // max_length {max_length} = {rows}: "
                         "remove per_device_batch_size (or data.tokens_per_batch)")
    r.trainer.per_device_batch_size = rows


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
        check_data_formats(self.trainer.kind, [s.format for s in [*self.data.train, *self.data.eval]])
        check_packing(self.trainer.kind, self.data.packing, self.data.padding_free)
        check_sft_options(self.trainer.kind, self.data)
        check_token_budget(self)
        if getattr(self.trainer, "optim", None) == "mezo":  # reft has no top-level optim
            check_mezo(self)
        if self.data.masked_thought and self.trainer.kind not in ("sft", "reft"):
            raise ValueError(f"data.masked_thought masks SFT inputs; trainer.kind `{self.trainer.kind}` has no SFT "
                             "stage (use sft, or reft, whose warm-up is SFT), or set data.masked_thought: 0")
        if self.trainer.kind == "reft" and self.method.name in ("loreft", "lofit", "bottleneck"):
            raise ValueError(f"method.name: {self.method.name} (hooked interventions/adapters) cannot carry the reft "
                             "trainer's SFT warm-up into its RL stage; use lora, full or another weight method")
        if getattr(self.method, "positions", "all") in ("last", "first_last") and self.trainer.kind != "sft":
            raise ValueError(f"method.positions: {self.method.positions} finds the prompt's last tokens from the SFT "
                             f"labels; trainer.kind `{self.trainer.kind}` has none (use positions all or first)")
        if self.trainer.kind == "reft" and self.launch.world_size > 1:
            raise ValueError("trainer.kind reft runs its two stages in one process so far; set launch.nproc and "
                             "launch.nnodes to 1 (multi-process ReFT is not supported yet)")
        return self

    @model_validator(mode="after")
    def _check_launch_compatibility(self) -> Recipe:
        check_launch_rules(self)  # the table in tunekit/launch/rules.py, rendered in docs/scaling.md
        return self
