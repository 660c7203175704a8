"""`galore`: full-parameter training with GaLore's low-rank gradient projection, through transformers' optimizers.

transformers implements GaLore as `optim: galore_*` with `optim_target_modules` and `optim_args`; it needs
the `galore-torch` package (`pip install tunekit[galore]`). The method sets those three TrainingArguments on
the built Trainer, before `train()` creates the optimizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekit.errors import UserError
from tunekit.methods.plan import MethodPlan

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def build(model: Any, cfg: Any, recipe: Recipe) -> Any:
    import importlib.util

    if importlib.util.find_spec("galore_torch") is None:
        raise UserError("method galore needs the galore-torch package: pip install 'tunekit[galore]'")
    if cfg.optimizer.endswith("layerwise") and recipe.trainer.gradient_accumulation_steps > 1:
        raise UserError("method.optimizer: layerwise GaLore cannot accumulate gradients; "
                        "set trainer.gradient_accumulation_steps: 1 or use galore_adamw")
    for p in model.parameters():
        p.requires_grad_(True)

    def configure(trainer: Any) -> None:
        args = f"rank={cfg.rank},update_proj_gap={cfg.update_proj_gap},scale={cfg.scale},proj_type={cfg.proj_type}"
        import torch
        from galore_torch.galore_projector import GaLoreProjector
        from transformers.training_args import OptimizerNames

        # GaLore keeps its projector objects in the optimizer state; resuming loads that state with
        # torch.load(weights_only=True), which needs the class allowlisted (torch's documented API for this).
        torch.serialization.add_safe_globals([GaLoreProjector])

        # Set on the built arguments (re-running their __post_init__ would reset accelerate's state).
        trainer.args.optim = OptimizerNames(cfg.optimizer)
        trainer.args.optim_target_modules = list(cfg.target_modules)
        trainer.args.optim_args = args

    return MethodPlan(model=model, configure_trainer=configure)
