"""Learning signal: in ReFT, the RL stage's mean held-out reward ends above the SFT warm-up's (fixed seeds, CPU).

The task (`builtin:arith/plus_one_*`, "... gets 1 more") is one the warm-up model sometimes gets right,
so sampled reasoning paths differ in reward and GRPO has a gradient. The reward is the recipe's:
numeric answer match plus a format reward (completion ends with `#### <number>`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_cli
from tests.e2e.test_reft import reft_recipe

pytestmark = pytest.mark.full  # a learning-signal test: `make test-full` (CI)


def test_rl_stage_beats_warmup_on_heldout_reward(tmp_path: Path) -> None:
    recipe = reft_recipe(
        tmp_path,
        data={"train": [{"path": "builtin:arith/plus_one_train.jsonl", "format": "prompt_answer"}],
              "eval": [{"path": "builtin:arith/plus_one_eval.jsonl", "format": "prompt_answer"}], "max_length": 96},
        method={"name": "full"},
        trainer={"kind": "reft",
                 "warmup": {"learning_rate": 6e-3, "lr_scheduler": "constant", "max_steps": 30,
                            "per_device_batch_size": 16, "logging_steps": 10, "seed": 0},
                 "rl": {"algorithm": "grpo", "learning_rate": 5e-4, "lr_scheduler": "constant", "max_steps": 30,
                        "per_device_batch_size": 16, "num_generations": 8, "max_completion_length": 16,
                        "beta": 0.0, "logging_steps": 5, "eval_samples": 4, "seed": 0,
                        "rewards": [{"type": "numeric_match"}, {"type": "format"}]}},
    )
    run_cli("train", recipe, check=True)
    run = tmp_path / "run"
    stages = json.loads((run / "summary.json").read_text())["stages"]
    warm, rl = stages["warmup"]["heldout_reward"], stages["rl"]["heldout_reward"]
    print(f"mean held-out reward: warm-up {warm:.3f}, after RL {rl:.3f}")
    assert 0 < warm < 1.5  # the warm-up model sometimes succeeds: there is something to learn
    assert rl >= warm + 0.1, (warm, rl)
    logged = [m["heldout_reward"] for m in read_metrics(run) if "heldout_reward" in m]
    assert logged == [warm, rl]
