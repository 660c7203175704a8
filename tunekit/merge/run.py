"""`tunekit merge`: one input merges its adapter into the base (`adapter.py`); several inputs are merged
on task vectors by `--method` (`models.py`)."""

from __future__ import annotations

import math
from pathlib import Path

from tunekit.errors import UserError
from tunekit.merge.adapter import merge_adapter
from tunekit.merge.models import merge_models

DTYPES = ("float32", "bfloat16", "float16")
AVERAGING = ("linear", "soup", "greedy_soup")  # weights are normalised to sum 1


def merge_cli(inputs: list[str], out: Path, method: str | None, weights: str | None, density: float, scale: float,
              base: str | None, eval_data: str | None, dtype: str, tolerance: float, seed: int,
              outliers: float = 0.01) -> dict:
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    for flag, value in (("--density", density), ("--scale", scale), ("--tolerance", tolerance),
                        ("--outliers", outliers)):
        if not math.isfinite(value):
            raise UserError(f"{flag} {value}: must be a finite number")
    out = Path(out).expanduser()
    if len(inputs) == 1 and method is None:
        return merge_adapter(inputs[0], out, dtype, tolerance)
    if len(inputs) < 2:
        raise UserError(f"--method {method}: give at least two inputs to merge (one input merges its adapter)")
    w = parse_weights(weights, method or "linear") if weights else None
    return merge_models(inputs, out, method or "linear", w, density, scale, base, eval_data, dtype, seed,
                                outliers)


def parse_weights(weights: str, method: str) -> list[float]:
    """`--weights 0.7,0.3`: finite numbers; for the averaging methods (normalised to sum 1) none negative and
    the sum positive, else the merge would divide by zero or flip the models."""
    try:
        w = [float(x) for x in weights.split(",")]
    except ValueError:
        raise UserError(f"--weights `{weights}`: expected comma-separated numbers, e.g. 0.5,0.5") from None
    bad = [x for x in w if not math.isfinite(x)]
    if bad:
        raise UserError(f"--weights `{weights}`: {bad[0]} is not a finite number")
    if method in AVERAGING and (min(w) < 0 or sum(w) <= 0):
        raise UserError(f"--weights `{weights}`: --method {method} averages the models, so weights must be >= 0 "
                        "with a positive sum (negative weights belong to --method task_arithmetic)")
    if not any(w):
        raise UserError(f"--weights `{weights}`: all weights are zero; the merge would be the base model")
    return w
