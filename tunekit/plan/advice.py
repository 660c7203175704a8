"""When a recipe does not fit: the cheapest changes that make it fit, each checked by the same estimator.

Changes in order of what they cost: activation checkpointing (about a third more compute), a smaller micro-batch
with more accumulation (same global batch, lower throughput), an 8-bit optimizer, QLoRA instead of LoRA or LoRA
instead of full fine-tuning (a different training), ZeRO-3 across the processes, and CPU offload (slow). Each
is tried alone; when none fits alone, they are stacked in that order until the recipe fits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tunekit.methods.schema import LORA_VARIANTS
from tunekit.recipe.overrides import apply_override, parse_override

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def candidates(r: Recipe) -> list[tuple[str, list[str]]]:
    t, m, world = r.trainer, r.method, r.launch.world_size
    out: list[tuple[str, list[str]]] = []
    if not t.gradient_checkpointing:
        out.append(("activation checkpointing", ["trainer.gradient_checkpointing=true"]))
    if t.per_device_batch_size > 1:
        b, acc = t.per_device_batch_size, t.gradient_accumulation_steps
        out.append((f"micro-batch 1 x {acc * b} accumulation (same global batch)",
                    ["trainer.per_device_batch_size=1", f"trainer.gradient_accumulation_steps={acc * b}"]))
    if t.optim in ("auto", "adamw_torch", "adamw_torch_fused", "adamw_hf") and m.name in ("full", "freeze", "lisa", "hft"):
        out.append(("8-bit AdamW (bitsandbytes)", ["trainer.optim=adamw_8bit"]))
    if m.name in ("lora", *LORA_VARIANTS):  # the variant's setting is kept (qlora has it too)
        out.append(("QLoRA: the base in 4-bit", ["method.name=qlora"]))
    if m.name == "full":
        out.append(("LoRA r=16 on all linear layers instead of full fine-tuning",
                    ["method.name=lora", "method.r=16", "method.target_modules=all-linear"]))
    if world > 1:
        out.append(("ZeRO-3 across the processes", ["launch.strategy=deepspeed", "launch.deepspeed.config=zero3"]))
    out.append(("ZeRO-3 with optimizer and parameters offloaded to CPU",
                ["launch.strategy=deepspeed", "launch.deepspeed.config=zero3-offload"]))
    return out


def with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe | None:
    """The recipe with dotted overrides applied and validated again, or None when the result is not valid."""
    from tunekit.recipe.schema import Recipe

    data = recipe.model_dump(mode="json", exclude_unset=True)
    for text in overrides:
        apply_override(data, parse_override(text))
    try:
        return Recipe.model_validate(data)
    except ValidationError:
        return None


def fixes(recipe: Recipe, fits: Callable[[Recipe], dict | None]) -> list[dict]:
    """`fits(recipe)` -> the verdict dict when it fits, else None. Returns the changes that fit, each with its
    overrides and verdict: every single change that fits, else the stack of changes up to the first that fits."""
    found: list[dict] = []
    stacked: list[str] = []
    names: list[str] = []
    for why, overrides in candidates(recipe):
        changed = with_overrides(recipe, overrides)
        result = fits(changed) if changed is not None else None
        if result is not None:
            found.append({"change": why, "overrides": overrides, **result})
    if found:
        return found
    for why, overrides in candidates(recipe):
        trial = with_overrides(recipe, [*stacked, *overrides])
        if trial is None:
            continue
        stacked += overrides
        names.append(why)
        result = fits(trial)
        if result is not None:
            return [{"change": " + ".join(names), "overrides": stacked, **result}]
    return []
