"""Trainer kind -> how it trains: a builder for one-stage kinds, a stage list for staged ones (reft).

A builder takes (recipe, model, tokenizer, train_ds, eval_ds, checkpoint_dir, callbacks) and returns a ready
transformers/TRL Trainer. To add a kind: write `<kind>.py` (its builder) and `<kind>_schema.py` (its `trainer:`
settings, added to the union in `schema.py`), then name the builder here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunekit.methods.registry import build_for_training
from tunekit.trainers import online_dpo, preference, reft, sft
from tunekit.trainers.stage import RunInputs, Stage, StagedRun

BUILDERS: dict[str, Callable[..., Any]] = {
    "sft": sft.build,
    "dpo": preference.build_dpo,
    "kto": preference.build_kto,
    "orpo": preference.build_orpo,
    "cpo": preference.build_cpo,
    "online_dpo": online_dpo.build_online_dpo,
}
STAGED: dict[str, Callable[[RunInputs], StagedRun]] = {
    "reft": reft.stages,  # SFT warm-up, then online RL
}


def stages(inputs: RunInputs) -> StagedRun:
    kind = inputs.recipe.trainer.kind
    if kind in STAGED:
        return STAGED[kind](inputs)
    return StagedRun([one_stage(inputs, BUILDERS[kind])])


def one_stage(inputs: RunInputs, build: Callable[..., Any]) -> Stage:
    """The run itself as the one stage: the method on the base model, the kind's trainer, outputs in the run dir."""
    r = inputs.recipe

    def build_trainer(plan: Any, checkpoint_dir: str, callbacks: list) -> Any:
        return build(r, plan.model, inputs.tokenizer, inputs.train_ds, inputs.eval_ds, checkpoint_dir, callbacks)

    return Stage(name="train", dir=inputs.out, recipe=r, seed=r.trainer.seed, train_ds=inputs.train_ds,
                 build_model=lambda: build_for_training(r, inputs.model_path, inputs.train_ds, inputs.tokenizer),
                 build_trainer=build_trainer)
