"""Learning signal: in ReFT, the RL stage's mean held-out reward ends above the SFT warm-up's (fixed seeds, CPU).

The task (`builtin:arith/plus_one_*`, "... gets 1 more") is one the warm-up model sometimes gets right,
so sampled reasoning paths differ in reward and GRPO / PPO have a gradient. The reward is the recipe's:
numeric answer match plus a format reward (completion ends with `#### <number>`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_cli
from tests.e2e.test_reft import reft_recipe

pytestmark = pytest.mark.full  # a learning-signal test: `make test-full` (CI)


WARMUP = {"learning_rate": 6e-3, "lr_scheduler": "constant", "max_steps": 30, "per_device_batch_size": 16,
          "logging_steps": 10, "seed": 0}
# The RL stage's settings both algorithms share (same samples per step, rewards and seed).
RL = {"learning_rate": 5e-4, "lr_scheduler": "constant", "per_device_batch_size": 16, "num_generations": 8,
      "max_completion_length": 16, "beta": 0.0, "eval_samples": 4, "seed": 0,
      "rewards": [{"type": "numeric_match"}, {"type": "format"}]}
PLUS_ONE = {"train": [{"path": "builtin:arith/plus_one_train.jsonl", "format": "prompt_answer"}],
            "eval": [{"path": "builtin:arith/plus_one_eval.jsonl", "format": "prompt_answer"}], "max_length": 96}


def test_rl_stage_beats_warmup_on_heldout_reward(tmp_path: Path) -> None:
    recipe = reft_recipe(
        tmp_path, data=PLUS_ONE, method={"name": "full"},
        trainer={"kind": "reft", "warmup": WARMUP, "rl": {**RL, "algorithm": "grpo", "max_steps": 30, "logging_steps": 5}},
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


def test_ppo_rl_stage_beats_warmup_on_heldout_reward(tmp_path: Path) -> None:
    """PPO (tunekit's trainer, its defaults: 2 epochs per rollout, vf_coef 0.1, gamma 1, lambda 0.95) after the same
    warm-up as the GRPO test. 60 steps = 30 rollouts of 16 completions: the samples GRPO's 30 steps draw.

    Observed (CPU, this config): mean held-out reward 0.555 after the warm-up, 0.766 after PPO (rl seed 1: 0.781).
    At lr 1e-3 the gain varied more with the seed (0.883, 0.625, 0.945 for seeds 0-2). With the paper's vf_coef 5
    this run reaches 0.633 (the value loss, through the shared body, drowns the policy gradient); GRPO with the same
    samples and steps (60 steps, num_iterations 2) 0.742. About 2 minutes on 2 CPU cores."""
    recipe = reft_recipe(
        tmp_path, data=PLUS_ONE, method={"name": "full"},
        trainer={"kind": "reft", "warmup": WARMUP, "rl": {**RL, "algorithm": "ppo", "max_steps": 60, "logging_steps": 10}},
    )
    run_cli("train", recipe, check=True)
    stages = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]
    warm, rl = stages["warmup"]["heldout_reward"], stages["rl"]["heldout_reward"]
    print(f"mean held-out reward: warm-up {warm:.3f}, after PPO {rl:.3f}")
    assert 0 < warm < 1.5
    assert rl >= warm + 0.1, (warm, rl)
    rows = [m for m in read_metrics(tmp_path / "run") if m.get("stage") == "rl" and "loss" in m]
    assert len(rows) == 7 and all(m["value/explained_variance"] <= 1 for m in rows)  # steps 1, 10, ..., 60
