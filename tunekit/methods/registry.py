"""Method name -> builder. A builder takes (model, method config, recipe) and returns the model to train."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunekit.methods import full, lora

BUILDERS: dict[str, Callable[..., Any]] = {
    "full": full.build,
    "lora": lora.build,
}


def apply_method(model: Any, recipe: Any) -> Any:
    return BUILDERS[recipe.method.name](model, recipe.method, recipe)


def count_parameters(model: Any) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_percent": round(100.0 * trainable / max(total, 1), 4)}
