"""ReFT end to end through the real CLI: SFT warm-up then GRPO / RLOO, stages, resume, reward errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import RECIPES, read_metrics, run_cli, tiny_recipe

QA = {"train": [{"path": "builtin:arith/train.jsonl", "format": "prompt_answer"}],
      "eval": [{"path": "builtin:arith/eval.jsonl", "format": "prompt_answer"}], "max_length": 96}


def _reft(tmp: Path, algorithm: str = "grpo", rewards: list | None = None, **rl: object) -> Path:
    trainer = {
        "kind": "reft",
        "warmup": {"learning_rate": 5e-3, "max_steps": 4, "per_device_batch_size": 8, "logging_steps": 2},
        "rl": {"algorithm": algorithm, "learning_rate": 1e-3, "max_steps": 2, "per_device_batch_size": 4,
               "num_generations": 4, "max_completion_length": 8, "logging_steps": 1, "beta": 0.05, "eval_samples": 1,
               "rewards": rewards or [{"type": "numeric_match"}, {"type": "format", "weight": 0.5}], **rl},
    }
    return reft_recipe(tmp, data=QA, trainer=trainer)


def reft_recipe(tmp: Path, trainer: dict, **sections: dict) -> Path:
    """tiny_recipe with the whole `trainer:` section replaced (it merges keys, and reft has other keys)."""
    path = tiny_recipe(tmp, **sections)
    recipe = yaml.safe_load(path.read_text())
    recipe["trainer"] = trainer
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("algorithm", ["grpo", pytest.param("rloo", marks=pytest.mark.full)])
def test_reft_runs_both_stages(tmp_path: Path, algorithm: str) -> None:
    run_cli("train", _reft(tmp_path, algorithm), check=True)
    run = tmp_path / "run"
    for name in ["recipe.resolved.yaml", "versions.json", "data.json", "metrics.jsonl", "summary.json"]:
        assert (run / name).is_file(), name
    for stage in ("warmup", "rl"):
        assert (run / "stages" / stage / "final" / "adapter_model.safetensors").is_file(), stage
    assert (run / "final" / "adapter_model.safetensors").is_file() and not (run / "final" / "ref").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["warmup"]["global_step"] == 4 and summary["stages"]["rl"]["global_step"] == 2
    assert all(isinstance(summary["stages"][s]["heldout_reward"], float) for s in ("warmup", "rl"))
    metrics = read_metrics(run)
    assert {m.get("stage") for m in metrics} == {"warmup", "rl"}
    rl_keys = set().union(*[m for m in metrics if m.get("stage") == "rl"])
    want = {"reward", "rewards/numeric_match/mean", "rewards/format/mean", "completions/mean_length",
            "completions/clipped_ratio", "kl"}
    assert want <= rl_keys, want - rl_keys


@pytest.mark.full
def test_resume_continues_in_the_rl_stage(tmp_path: Path) -> None:
    recipe = _reft(tmp_path)
    run_cli("train", recipe, "output.save_steps=1", check=True)
    run = tmp_path / "run"
    # Stopped during RL: the warm-up is done, RL has written checkpoint-1 only.
    for p in ("final", "summary.json", "stages/rl/final", "stages/rl/stage.json", "stages/rl/checkpoints/checkpoint-2"):
        shutil.rmtree(run / p) if (run / p).is_dir() else (run / p).unlink()
    proc = run_cli("train", recipe, "output.save_steps=1", "--resume", check=True)
    assert "warm-up already finished" in proc.stderr and "rl: resuming from" in proc.stderr
    assert "checkpoint-1" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["rl"]["resumed_from"].endswith("checkpoint-1")
    rl_steps = [m["step"] for m in read_metrics(run) if m.get("stage") == "rl" and "loss" in m]
    assert rl_steps == [1, 2]  # no duplicated RL rows after the resume
    warm_steps = [m["step"] for m in read_metrics(run) if m.get("stage") == "warmup" and "loss" in m]
    assert warm_steps == [1, 2, 4]  # logged once by the first run, untouched by the RL resume


@pytest.mark.full  # the reward error itself is unit-tested (tests/unit/test_rewards.py)
def test_raising_reward_function_stops_the_run_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "rewards.py").write_text(
        "def picky(completions, answer, **kwargs):\n"
        "    return [1.0 / 0 if c else 0.0 for c in completions]\n")
    recipe = _reft(tmp_path, rewards=[{"type": "python", "file": str(tmp_path / "rewards.py"), "function": "picky"}])
    proc = run_cli("train", recipe)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "reward function `picky`" in proc.stderr and "ZeroDivisionError" in proc.stderr
    assert "completion:" in proc.stderr and "Traceback" not in proc.stderr


def test_reward_signature_checked_at_validate(tmp_path: Path) -> None:
    (tmp_path / "rewards.py").write_text("def picky(text):\n    return [0.0]\n")
    recipe = _reft(tmp_path, rewards=[{"type": "python", "file": str(tmp_path / "rewards.py"), "function": "picky"}])
    proc = run_cli("validate", recipe)
    assert proc.returncode == 2 and "picky" in proc.stderr and "**kwargs" in proc.stderr


def test_validate_shows_both_stages() -> None:
    proc = run_cli("validate", RECIPES / "reft.yaml")
    assert proc.returncode == 0, proc.stderr
    trainer = yaml.safe_load(proc.stdout)["trainer"]
    assert trainer["kind"] == "reft"
    assert {"learning_rate", "max_steps", "seed"} <= set(trainer["warmup"])
    assert {"algorithm", "num_generations", "max_completion_length", "temperature", "top_p", "beta",
            "rewards"} <= set(trainer["rl"])


@pytest.mark.full
def test_warmup_builds_data_calibrated_methods(tmp_path: Path) -> None:
    """The warm-up goes through the same model + method step as SFT runs: an eva init calibrates on the warm-up's
    own batches (before the shared pipeline the reft flow passed no calibration data and the run stopped)."""
    recipe = _reft(tmp_path)
    proc = run_cli("train", recipe, "method.init_lora_weights=eva", "method.calibration_batches=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["warmup"]["global_step"] == 4 and summary["stages"]["rl"]["global_step"] == 2
