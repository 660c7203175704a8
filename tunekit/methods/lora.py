"""`lora`: peft LoRA adapters on a frozen base."""

from __future__ import annotations

from typing import Any


def peft_config(cfg: Any) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias=cfg.bias,
        modules_to_save=cfg.modules_to_save or None,
    )


def build(model: Any, cfg: Any, recipe: Any) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_config(cfg))
