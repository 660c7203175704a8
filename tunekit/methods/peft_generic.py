"""Every other peft tuner, by name: the recipe's options go to peft's own config class unchanged.

Options left out of the recipe are not passed, so peft's defaults apply. A few tuners need a value tunekit
knows from the recipe (AdaLoRA's `total_step` = trainer.max_steps); those are filled in when not given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekit.errors import UserError
from tunekit.methods.lora import peft_kwargs
from tunekit.methods.plan import MethodPlan

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def peft_config(cfg: Any, recipe: Recipe) -> Any:
    from peft import TaskType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PeftType

    cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(cfg.name.upper())]
    kw = peft_kwargs(cfg, cfg.name)
    if cfg.name == "adalora" and "total_step" not in kw:
        if recipe.trainer.max_steps <= 0:
            raise UserError("method.total_step: adalora needs the total number of steps; set method.total_step "
                            "or trainer.max_steps")
        kw["total_step"] = recipe.trainer.max_steps
    try:
        return cls(task_type=TaskType.CAUSAL_LM, **kw)
    except (ValueError, TypeError) as e:
        raise UserError(f"method ({cfg.name}): peft rejected the options: {e}") from None


def build(model: Any, cfg: Any, recipe: Recipe) -> Any:
    from peft import get_peft_model

    try:
        model = get_peft_model(model, peft_config(cfg, recipe))
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"method ({cfg.name}): peft cannot apply it to this model: {e}") from None
    callbacks = [_AdaloraCallback()] if cfg.name == "adalora" else []
    return MethodPlan(model=model, callbacks=callbacks)


def _AdaloraCallback() -> Any:  # noqa: N802 (a factory: transformers is imported lazily)
    from transformers import TrainerCallback

    class AdaloraRankUpdate(TrainerCallback):
        """AdaLoRA reallocates rank after each optimizer step (peft: `update_and_allocate(global_step)`)."""

        def on_optimizer_step(self, args, state, control, model=None, **kw):  # noqa: ANN001
            model.base_model.update_and_allocate(state.global_step)

    return AdaloraRankUpdate()
