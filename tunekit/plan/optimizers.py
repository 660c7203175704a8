"""Optimizer state bytes per optimizer (`trainer.optim`, transformers' names), per trainable parameter tensor.

- AdamW (torch, fused, apex): exp_avg and exp_avg_sq in the parameter's dtype, plus a float32 `step` tensor.
- bitsandbytes 8-bit (adamw_8bit, adamw_bnb_8bit, paged_adamw_8bit, lion_8bit): uint8 states with a float32
  absmax per 256 values for tensors of at least 4096 values; smaller tensors keep float32 states.
- bitsandbytes 32-bit (paged_adamw_32bit, lion_32bit ...): float32 states.
- Adafactor (transformers): factored float32 second moment (row + column) for matrices, full for vectors.
- SGD (transformers' `sgd`: no momentum), Adagrad, RMSprop, Lion: none, one or one state.
- GaLore (galore_adamw ...): Adam states of the projected gradient (rank x the larger side) plus the projection
  matrix (the smaller side x rank) for 2-D weights of the target modules; other tensors plain AdamW.
`paged_*` states live in unified memory that the driver can evict to the CPU under pressure; they are counted
on the GPU here (the steady state). Unknown names are planned as AdamW and say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tunekit.plan.params import Param

ADAMW = {"auto", "adamw_torch", "adamw_torch_fused", "adamw_apex_fused", "adamw_torch_xla", "adamw_torch_npu_fused",
         "adafactor_off", "adamw_hf"}
BNB_8BIT = {"adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "adamw_anyprecision_8bit", "ademamix_8bit",
            "paged_ademamix_8bit"}
BNB_32BIT = {"paged_adamw_32bit", "paged_adamw", "adamw_bnb_32bit", "ademamix", "paged_ademamix_32bit"}
ONE_STATE = {"lion_32bit": 4, "paged_lion_32bit": 4, "lion_8bit": 1, "paged_lion_8bit": 1, "adagrad": None,
             "rmsprop": None, "rmsprop_bnb_32bit": 4, "rmsprop_bnb_8bit": 1}
NO_STATE = {"sgd"}
MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit state below this many values
BNB_BLOCK = 256


def _adamw(p: Param) -> int:
    return 2 * p.numel * p.element_bytes + 4


def _bnb(p: Param, states: int, state_bytes: int) -> int:
    if state_bytes == 1 and p.numel >= MIN_8BIT_SIZE:
        return states * (p.numel + 4 * math.ceil(p.numel / BNB_BLOCK))
    return states * p.numel * 4


def _adafactor(p: Param) -> int:
    scalar = 4  # a float32 scalar tensor per parameter next to the factors
    if len(p.shape) < 2:
        return 4 * p.numel + scalar
    return 4 * (math.prod(p.shape[:-1]) + math.prod(p.shape[:-2]) * p.shape[-1]) + scalar


def _galore(p: Param, rank: int, targets: tuple[str, ...]) -> int:
    if len(p.shape) != 2 or not any(t in p.name for t in targets):
        return _adamw(p)
    big, small = max(p.shape), min(p.shape)
    r = min(rank, small)
    return 2 * r * big * 4 + small * r * p.element_bytes + 4


def state_bytes(optim: str, params: Iterable[Param], galore: tuple[int, tuple[str, ...]] | None = None) -> int:
    """Optimizer state bytes for the trainable parameters `params` under optimizer `optim`."""
    total = 0
    for p in params:
        if optim.startswith("galore") and galore:
            total += _galore(p, *galore)
        elif optim in NO_STATE:
            continue
        elif optim in BNB_8BIT:
            total += _bnb(p, 2, 1)
        elif optim in BNB_32BIT:
            total += _bnb(p, 2, 4)
        elif optim in ONE_STATE:
            size = ONE_STATE[optim]
            total += _bnb(p, 1, size) if size else p.numel * p.element_bytes + 4
        elif optim.startswith("adafactor"):
            total += _adafactor(p)
        else:
            total += _adamw(p)
    return total


def is_known(optim: str) -> bool:
    return (optim in ADAMW | BNB_8BIT | BNB_32BIT | NO_STATE or optim in ONE_STATE
            or optim.startswith(("galore", "adafactor")))


def is_paged(optim: str) -> bool:
    return optim.startswith("paged_")
