"""Training on packed data with a named chat template (in-process pipeline, tiny model, a few steps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.conftest import read_metrics, tiny_recipe
from tunekit.data.templates import load_template


def test_packed_training_saves_stats_and_the_template_used(tmp_path: Path) -> None:
    from tunekit.pipeline import train
    from tunekit.recipe.load import load_recipe

    recipe = tiny_recipe(tmp_path, data={"packing": True, "chat_template": "qwen", "max_length": 128},
                         trainer={"max_steps": 3, "per_device_batch_size": 2})
    run = train(load_recipe(recipe, []))
    stats = json.loads((run / "data.json").read_text())["stats"]
    assert stats["train"]["packing"]["efficiency"] > 0.8 and stats["chat_template"] == "qwen"
    assert (run / "final" / "chat_template.jinja").read_text() == load_template("qwen")
    losses = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert len(losses) >= 3 and all(math.isfinite(x) for x in losses)
