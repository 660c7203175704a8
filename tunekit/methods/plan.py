"""What a method builder returns: the model to train and what the method needs from the trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MethodPlan:
    model: Any
    callbacks: list = field(default_factory=list)  # TrainerCallbacks the method needs (LISA's layer schedule)
    configure_trainer: Callable[[Any], None] | None = None  # last change to the Trainer (LoRA+ / GaLore optimizer)
    save: Callable[[Any, Path], None] | None = None  # writes final/ (default: trainer.save_model)
    params: dict | None = None  # parameter counts when they differ from requires_grad at build time (LISA)

    def parameters(self) -> dict:
        return self.params or count_parameters(self.model)


def count_parameters(model: Any) -> dict:
    """Trainable and total parameters. 4-bit weights count as their logical (unpacked) size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n = getattr(p, "quant_state", None).shape.numel() if getattr(p, "quant_state", None) else n * 2
        total += n
        trainable += n if p.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_percent": round(100.0 * trainable / max(total, 1), 4)}
