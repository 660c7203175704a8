"""Trainer kind -> builder. A builder returns a ready (transformers/TRL) Trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunekit.trainers import preference, sft

BUILDERS: dict[str, Callable[..., Any]] = {
    "sft": sft.build,
    "dpo": preference.build_dpo,
    "kto": preference.build_kto,
    "orpo": preference.build_orpo,
    "cpo": preference.build_cpo,
}
