"""The data plan: rows, tokens, trained tokens, packed rows, steps and tokens per step, from the data cache when
it is there, else from a quick tokenisation (which fills the cache `tunekit train` then reuses)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tunekit.errors import UserError

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def data_plan(recipe: Recipe, world: int) -> dict:
    """Rows and tokens of the training split and what one optimizer step consumes; `{"available": False,
    "reason": ...}` when the data cannot be prepared here (no tokenizer beside a config-only model ...)."""
    from tunekit.data.build import build_datasets
    from tunekit.model.load import load_tokenizer

    try:
        tokenizer = load_tokenizer(recipe.model)
        train, _, stats = build_datasets(recipe.data, tokenizer, recipe.trainer.seed, recipe.model)
    except (UserError, OSError, ValueError) as e:
        return {"available": False, "reason": str(e).splitlines()[0][:300]}
    t = recipe.trainer
    rows, split = len(train), stats.get("train") or {}
    tokens = int(split.get("tokens") or 0)
    lengths = [len(ids) for ids in train["input_ids"]] if "input_ids" in train.column_names else []
    global_batch = t.per_device_batch_size * t.gradient_accumulation_steps * world
    steps_per_epoch = max(1, math.ceil(rows / global_batch))
    steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.num_epochs)
    per_row = tokens / max(rows, 1) if not lengths else sum(lengths) / len(lengths)
    return {"available": True, "cache": stats.get("cache"), "rows": rows, "tokens": tokens,
            "trained_tokens": split.get("trained_tokens"), "packed": bool(recipe.data.packing),
            "longest_row": max(lengths) if lengths else None, "global_batch": global_batch,
            "steps_per_epoch": steps_per_epoch, "steps": steps, "tokens_per_step": round(per_row * global_batch),
            "tokens_total": round(per_row * global_batch * steps)}
