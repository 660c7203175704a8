"""Trainer kind -> builder. A builder returns a ready (transformers/TRL) Trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunekit.trainers import sft

BUILDERS: dict[str, Callable[..., Any]] = {
    "sft": sft.build,
}
