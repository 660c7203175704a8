"""`full`: every parameter trains."""

from __future__ import annotations

from typing import Any


def build(model: Any, cfg: Any, recipe: Any) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model
