"""ReFT end to end through the real CLI: SFT warm-up then GRPO / RLOO / PPO, stages, resume, reload, reward errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

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
    # a user's reward (weight 0) that records which columns it was given: docs/trainers.md promises every
    # prompt_answer column, in the RL stage as in the held-out reward (the RL stage used to leave `solution` out)
    (tmp_path / "seen.py").write_text(
        "import json\n"
        "def seen(completions, answer, solution, **kwargs):\n"
        f"    with open({str(tmp_path / 'seen.jsonl')!r}, 'a') as f:\n"
        "        f.write(json.dumps(sorted(['answer', 'solution', *kwargs])) + '\\n')\n"
        "    return [0.0] * len(completions)\n")
    rewards = [{"type": "numeric_match"}, {"type": "format", "weight": 0.5},
               {"type": "python", "file": str(tmp_path / "seen.py"), "function": "seen", "weight": 0.0}]
    run_cli("train", _reft(tmp_path, algorithm, rewards=rewards), check=True)
    calls = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert len(calls) >= 3 and all({"prompts", "question", "answer", "solution"} <= set(c) for c in calls), calls
    run = tmp_path / "run"
    for name in ["recipe.resolved.yaml", "versions.json", "data.json", "metrics.jsonl", "summary.json"]:
        assert (run / name).is_file(), name
    for stage in ("warmup", "rl"):
        assert (run / "stages" / stage / "final" / "adapter_model.safetensors").is_file(), stage
    assert (run / "final" / "adapter_model.safetensors").is_file() and not (run / "final" / "ref").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["warmup"]["global_step"] == 4 and summary["stages"]["rl"]["global_step"] == 2
    assert all(isinstance(summary["stages"][s]["heldout_reward"], float) for s in ("warmup", "rl"))
    rl = summary["stages"]["rl"]  # sampling timed apart from the rest of the RL steps (its bottleneck)
    assert rl["generation_calls"] >= 1 and 0 < rl["generation_seconds"] <= rl["train_seconds"]
    assert rl["other_train_seconds"] == pytest.approx(rl["train_seconds"] - rl["generation_seconds"], abs=0.011)
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


# ------------------------------------------------------------------------------------------------------- PPO
# 4 RL steps, PPO's defaults (2 epochs, 1 minibatch): rollouts at steps 1 and 3, each trained on twice. The second
# reward gives the tiny warmed-up model some signal from the first rollout on (it writes digits about half the
# time; the answer itself it seldom gets right): with every reward 0 and no KL yet, PPO's gradient is exactly 0.
PPO_REWARDS = [{"type": "numeric_match"}, {"type": "regex_match", "pattern": r"\d", "weight": 0.5}]
PPO_METRICS = {"reward", "reward_std", "rewards/numeric_match/mean", "rewards/regex_match/mean", "kl", "loss/policy",
               "loss/value", "policy/clipfrac", "policy/approxkl", "entropy", "value/clipfrac",
               "value/explained_variance", "completions/mean_length", "completions/clipped_ratio"}


def _ppo(tmp: Path, method: str) -> Path:
    recipe = _reft(tmp, "ppo", rewards=PPO_REWARDS, max_steps=4)
    if method == "full":
        text = yaml.safe_load(recipe.read_text())
        recipe.write_text(yaml.safe_dump({**text, "method": {"name": "full"}}, sort_keys=False))
    return recipe


@pytest.mark.parametrize("method", ["lora", pytest.param("full", marks=pytest.mark.slow)])
def test_ppo_trains_saves_and_reloads(tmp_path: Path, method: str) -> None:
    run_cli("train", _ppo(tmp_path, method), "output.save_steps=1", check=True)
    run, weights = tmp_path / "run", "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    for final in (run / "final", run / "stages" / "rl" / "final"):
        assert (final / weights).is_file() and (final / "value_head.safetensors").is_file(), final
    assert not (run / "final" / "ref").exists()  # the frozen KL reference adapter is not part of the result
    head = load_file(str(run / "final" / "value_head.safetensors"))
    assert head["weight"].shape == (1, 64) and head["weight"].abs().sum() > 0  # trained from its zero init
    ckpts = run / "stages" / "rl" / "checkpoints"
    assert all((ckpts / f"checkpoint-{s}" / "value_head.safetensors").is_file() for s in (1, 2, 3, 4))
    # a checkpoint inside a rollout (after step 1 of the rollout that steps 1-2 train on) keeps the rollout
    assert (ckpts / "checkpoint-1" / "ppo_rollout.safetensors").is_file()
    assert not (ckpts / "checkpoint-2" / "ppo_rollout.safetensors").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "ppo" and summary["stages"]["rl"]["global_step"] == 4
    assert isinstance(summary["stages"]["rl"]["heldout_reward"], float)
    assert summary["stages"]["rl"]["generation_calls"] == 2  # one sampling call per rollout (2 steps each)
    rows = [m for m in read_metrics(run) if m.get("stage") == "rl" and "loss" in m]
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    assert all(set(m) >= PPO_METRICS for m in rows), PPO_METRICS - set(rows[0])
    assert rows[0]["policy/clipfrac"] == 0 and rows[0]["policy/approxkl"] < 1e-10  # step 1: the sampling policy
    assert rows[0]["reward"] == rows[1]["reward"] and rows[2]["reward"] == rows[3]["reward"]  # one rollout each
    proc = run_cli("eval", run, "--no-base", "--max-examples", "8", check=True)
    report = json.loads((run / "eval" / "report.json").read_text())
    assert "numeric_match" in report["tasks"]["heldout-answers"]["tuned"], proc.stderr[-2000:]


@pytest.mark.slow  # ~45 s on 2 cores (by hand: make test-all)
def test_ppo_resume_ends_like_the_uninterrupted_run(tmp_path: Path) -> None:
    """Stopped inside a rollout (after step 1: the checkpoint keeps the rollout) or between rollouts (after step 2),
    `--resume` ends where the uninterrupted run ended.

    Tolerance: the resumed run starts from bit-identical state: weights, value head, optimizer and scheduler
    state (safetensors / torch.save, exact), the RNG state (transformers saves it with the checkpoint) and, inside
    a rollout, the rollout's tensors. It then runs the same float32 CPU kernels on the same shapes in the same order,
    so the figures agree exactly in practice; 1e-6 (relative) only leaves room for a BLAS that reduces in another
    order across processes. A resume that re-sampled the rollout instead would differ from the first resumed step
    on (other completions, rewards and losses)."""
    (tmp_path / "a").mkdir()
    recipe = _ppo(tmp_path / "a", "lora")
    run_cli("train", recipe, "output.save_steps=1", check=True)
    done = tmp_path / "a" / "run"
    want = [m for m in read_metrics(done) if m.get("stage") == "rl" and "loss" in m]
    for stopped_at in (1, 2):
        copy = tmp_path / f"stopped-{stopped_at}"
        shutil.copytree(tmp_path / "a", copy)
        (copy / "recipe.yaml").write_text((copy / "recipe.yaml").read_text().replace(str(tmp_path / "a"), str(copy)))
        rl = copy / "run" / "stages" / "rl"
        for p in [copy / "run" / "final", copy / "run" / "summary.json", rl / "final", rl / "stage.json",
                  *[c for c in (rl / "checkpoints").glob("checkpoint-*") if int(c.name.split("-")[1]) > stopped_at]]:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        proc = run_cli("train", copy / "recipe.yaml", "output.save_steps=1", "--resume", check=True)
        assert f"rl: resuming from {rl / 'checkpoints' / f'checkpoint-{stopped_at}'}" in proc.stderr
        got = [m for m in read_metrics(copy / "run") if m.get("stage") == "rl" and "loss" in m]
        assert [m["step"] for m in got] == [1, 2, 3, 4]
        for g, w in zip(got, want):
            for key in ("loss", "grad_norm", "reward", "kl", "loss/policy", "loss/value", "policy/approxkl"):
                assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-9), (stopped_at, g["step"], key)
        for name in ("adapter_model.safetensors", "value_head.safetensors"):
            a, b = load_file(str(done / "final" / name)), load_file(str(copy / "run" / "final" / name))
            assert all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-9) for k in a), (stopped_at, name)
