"""`tunekit merge`: one input merges its adapter into the base (`adapter.py`); several inputs are merged
on task vectors by `--method` (`models.py`)."""

from __future__ import annotations

from pathlib import Path

from tunekit.errors import UserError
from tunekit.merge.adapter import merge_adapter
from tunekit.merge.models import merge_models


def merge_cli(inputs: list[str], out: Path, method: str | None, weights: str | None, density: float, scale: float,
              base: str | None, eval_data: str | None, dtype: str, tolerance: float, seed: int,
              outliers: float = 0.01) -> dict:
    if len(inputs) == 1 and method is None:
        return merge_adapter(inputs[0], out, dtype, tolerance)
    if len(inputs) < 2:
        raise UserError(f"--method {method}: give at least two inputs to merge (one input merges its adapter)")
    w = None
    if weights:
        try:
            w = [float(x) for x in weights.split(",")]
        except ValueError:
            raise UserError(f"--weights `{weights}`: expected comma-separated numbers, e.g. 0.5,0.5") from None
    return merge_models(inputs, out, method or "linear", w, density, scale, base, eval_data, dtype, seed,
                                outliers)
