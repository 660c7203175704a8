"""`tunekit plan` answers for every shipped recipe (staged kinds included), before anything loads."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RECIPES, run_cli
from tunekit.plan import hardware
from tunekit.plan.report import for_run, plan
from tunekit.recipe.load import load_recipe

# Recipes on the offline builtin models (the -gpu recipes name hub models, which tests cannot reach).
SHIPPED = sorted(p.name for p in RECIPES.glob("*.yaml") if load_recipe(p).model.path.startswith("builtin:"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_is_planned(name: str) -> None:
    recipe = load_recipe(RECIPES / name)
    result = plan(recipe, hardware.gpu(hardware.DEFAULT_GPU), device="cpu", with_data=False)
    assert result["fit"]["verdict"] in ("fits", "tight", "does not fit")
    recorded = for_run(recipe, "cpu")  # what `tunekit train` records in summary.json
    assert recorded is not None and "error" not in recorded and recorded["peak_bytes"] > 0, recorded


def test_plan_command_prints_json_for_a_staged_kind() -> None:
    proc = run_cli("plan", RECIPES / "reft.yaml", "--no-data", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["recipe"]["method"] == load_recipe(RECIPES / "reft.yaml").method.name
