"""`tunekit merge`: one input merges its adapter into the base (`adapter.py`); several inputs are merged
on task vectors by `--method` (`models.py`)."""

from __future__ import annotations

import math
from pathlib import Path

from tunekit.errors import UserError
from tunekit.merge.adapter import merge_adapter
from tunekit.merge.models import METHODS, merge_models

DTYPES = ("float32", "bfloat16", "float16")
AVERAGING = ("linear", "soup", "greedy_soup")  # weights are normalised to sum 1
DENSITY = ("ties", "dare_linear", "dare_ties", "magnitude_prune", "breadcrumbs")
# The methods that read each option ("adapter": the one-input merge), and the option's CLI default: another method
# given another value refuses it rather than drop it.
READ_BY: dict[str, tuple[tuple[str, ...], object]] = {
    "--scale": (("task_arithmetic", *DENSITY), 1.0),
    "--density": (DENSITY, 0.5),
    "--outliers": (("breadcrumbs",), 0.01),
    "--eval-data": (("greedy_soup",), None),
    "--tolerance": (("adapter",), 1e-4),
    "--seed": (("dare_linear", "dare_ties"), 0),
    "--weights": (tuple(m for m in METHODS if m not in ("greedy_soup", "model_stock")), None),
    "--base": (METHODS, None),
}


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
    if method is not None and method not in METHODS:
        raise UserError(f"--method {method}: unknown; choose one of {', '.join(METHODS)}")
    mode = "adapter" if len(inputs) == 1 and method is None else method or "linear"
    check_used({"--scale": scale, "--density": density, "--outliers": outliers, "--eval-data": eval_data,
                "--tolerance": tolerance, "--seed": seed, "--weights": weights, "--base": base}, mode)
    check_fractions(density, outliers, tolerance, mode)
    if mode == "adapter":
        return merge_adapter(inputs[0], out, dtype, tolerance)
    if len(inputs) < 2:
        raise UserError(f"--method {method}: give at least two inputs to merge (one input merges its adapter)")
    w = parse_weights(weights, mode) if weights else None
    return merge_models(inputs, out, mode, w, density, scale, base, eval_data, dtype, seed, outliers)


def check_used(given: dict, mode: str) -> None:
    """Refuse an option set to a non-default value that `mode` does not read."""
    for flag, value in given.items():
        methods, default = READ_BY[flag]
        if mode not in methods and value != default:
            what = "an adapter merge (one input, no --method)" if mode == "adapter" else f"--method {mode}"
            users = ", ".join("one-input adapter merges" if m == "adapter" else m for m in methods)
            raise UserError(f"{flag} {value}: {what} does not use it (only {users} do); remove {flag}")


def check_fractions(density: float, outliers: float, tolerance: float, mode: str) -> None:
    """--density in (0, 1], --outliers in [0, 1) and with breadcrumbs outliers + density <= 1, --tolerance >= 0."""
    if not 0.0 < density <= 1.0:
        raise UserError(f"--density {density}: must be in (0, 1]")
    if not 0.0 <= outliers < 1.0:
        raise UserError(f"--outliers {outliers}: must be in [0, 1) (the fraction of largest deltas dropped)")
    if mode == "breadcrumbs" and outliers + density > 1.0:
        raise UserError(f"--outliers {outliers} --density {density}: breadcrumbs drops the top --outliers fraction "
                        "and keeps the next --density fraction, so together they must be at most 1")
    if tolerance < 0:
        raise UserError(f"--tolerance {tolerance}: must be >= 0")


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
