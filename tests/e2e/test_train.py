"""`tunekit train` end to end through the real CLI on the builtin tiny model (CPU, offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import losses, read_metrics, run_cli, tiny_recipe
from tunekit.model.builtin import materialize

RUN_FILES = ["recipe.resolved.yaml", "versions.json", "data.json", "metrics.jsonl", "summary.json"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lora")
    recipe = tiny_recipe(tmp, trainer={"max_steps": 30}, output={"dir": str(tmp / "run"), "save_steps": 15})
    proc = run_cli("train", recipe, check=True)
    (tmp / "console.txt").write_text(proc.stdout + proc.stderr)
    return tmp / "run"


def test_lora_run_writes_every_output(lora_run: Path) -> None:
    for name in RUN_FILES:
        assert (lora_run / name).is_file(), name
    final = lora_run / "final"
    assert (final / "adapter_model.safetensors").is_file() and (final / "adapter_config.json").is_file()
    assert (final / "tokenizer.json").is_file() and (final / "chat_template.jinja").is_file()
    assert sorted(p.name for p in (lora_run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-15", "checkpoint-30"]
    metrics = read_metrics(lora_run)
    assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_s"} <= set(metrics[-2])
    summary = json.loads((lora_run / "summary.json").read_text())
    assert summary["global_step"] == 30 and 0 < summary["params"]["trainable"] < summary["params"]["total"]
    versions = json.loads((lora_run / "versions.json").read_text())
    assert {"torch", "transformers", "peft", "trl"} <= set(versions)
    # The plan's estimate next to the measured peak, and its one line printed at start (docs/plan.md).
    memory = summary["memory"]
    assert memory["predicted"]["peak_bytes"] == sum(memory["predicted"]["per_device"].values()) > 0
    assert memory["measured"]["peak_bytes"] > 0 and memory["measured"]["source"]
    console = (lora_run.parent / "console.txt").read_text()
    assert "plan: " in console and " per device predicted (single, on cpu" in console


def test_loss_falls(lora_run: Path) -> None:
    steps = losses(lora_run)
    assert sum(steps[-3:]) / 3 < steps[0] - 0.3, steps


def test_lora_changes_adapter_and_not_base(lora_run: Path) -> None:
    adapter = load_file(lora_run / "final" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)  # B starts at zero; training moved every one
    # The base weights on disk (what the adapter applies to) are exactly the builtin init.
    base_dir = materialize("builtin:tiny-llama", 0)
    base = load_file(base_dir / "model.safetensors")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), lora_run / "final")
    merged_base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                   for k, v in model.state_dict().items() if "lora_" not in k}
    for k, v in base.items():
        assert torch.equal(merged_base[k], v), k


@pytest.mark.full  # `make test` trains `full` in-process (tests/e2e/test_methods.py)
def test_full_method_trains_every_weight(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, method={"name": "full"}, trainer={"max_steps": 3, "learning_rate": 1e-3})
    run_cli("train", recipe, check=True)
    before = load_file(materialize("builtin:tiny-llama", 0) / "model.safetensors")
    after = load_file(tmp_path / "run" / "final" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)


def test_non_empty_output_dir_is_refused(lora_run: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, output={"dir": str(lora_run)})
    proc = run_cli("train", recipe)
    assert proc.returncode == 2 and "is not empty" in proc.stderr and "--resume" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (lora_run / "final").exists()  # nothing was touched


def test_missing_data_file_exits_2(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, data={"train": [{"path": str(tmp_path / "none.jsonl"), "format": "messages"}]})
    proc = run_cli("train", recipe)
    assert proc.returncode == 2 and "none.jsonl" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("logging_steps", [1, 3])
def test_resume_matches_uninterrupted_run(tmp_path: Path, logging_steps: int) -> None:
    """A run stopped right after its first checkpoint and resumed ends exactly like an uninterrupted run. With
    logging_steps 3 the checkpoint (step 4) falls between logged rows: the row at step 6 averages steps 4-6 in both
    runs (the resumed one used to average 5-6 only: the loss of step 4 was not carried in the checkpoint)."""
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 8, "logging_steps": logging_steps, "warmup_steps": 2},
                         output={"dir": str(tmp_path / "full"), "save_steps": 4})
    run_cli("train", recipe, check=True)
    full = tmp_path / "full"
    # The stopped run: exactly what the run dir held when checkpoint-4 had been written.
    stopped = tmp_path / "stopped"
    shutil.copytree(full, stopped)
    for p in ("final", "summary.json", "checkpoints/checkpoint-8"):
        shutil.rmtree(stopped / p) if (stopped / p).is_dir() else (stopped / p).unlink()
    proc = run_cli("train", recipe, f"output.dir={stopped}", "--resume", check=True)
    assert "resuming from" in proc.stderr
    a, b = json.loads((full / "summary.json").read_text()), json.loads((stopped / "summary.json").read_text())
    assert a["global_step"] == b["global_step"] == 8
    assert b["final_loss"] == pytest.approx(a["final_loss"], abs=1e-4)
    assert losses(stopped) == pytest.approx(losses(full), abs=1e-4)  # no duplicated or missing steps in metrics.jsonl
    rows = {name: [r for r in read_metrics(run) if "loss" in r] for name, run in (("full", full), ("stopped", stopped))}
    assert [r["step"] for r in rows["stopped"]] == [r["step"] for r in rows["full"]]
    # TRL's per-step metrics are carried too (token accuracy: an average over the same steps)
    accuracy = {name: [r["mean_token_accuracy"] for r in rs] for name, rs in rows.items()}
    assert accuracy["stopped"] == pytest.approx(accuracy["full"], abs=1e-6)
    wa = load_file(full / "final" / "adapter_model.safetensors")
    wb = load_file(stopped / "final" / "adapter_model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_the_last_step_is_always_logged_and_is_the_final_loss(tmp_path: Path) -> None:
    """3 steps at logging_steps 10 logged step 1 only, and `final loss` (console, summary.json, model card, compare's
    ranking) was step 1's."""
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 3, "logging_steps": 10})
    proc = run_cli("train", recipe, check=True)
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 3]
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final_loss"]
    assert final == rows[-1]["loss"] and f"final loss {final:.4f}" in proc.stderr


def test_data_shuffle_seed_alone_sets_the_order_of_the_batches(tmp_path: Path) -> None:
    """transformers' sampler was seeded with trainer.seed: with data.shuffle_seed pinned, another trainer.seed still
    reordered the batches. LoRA's B starts at 0 and dropout is 0, so step 1's loss depends only on its batch."""
    def first_loss(name: str, seed: int, shuffle_seed: int) -> float:
        recipe = tiny_recipe(tmp_path, f"{name}.yaml", trainer={"max_steps": 1, "seed": seed},
                             data={"shuffle_seed": shuffle_seed}, output={"dir": str(tmp_path / name)})
        run_cli("train", recipe, check=True)
        return losses(tmp_path / name)[0]

    base = first_loss("a", 0, 0)
    assert first_loss("b", 1, 0) == base  # another init/dropout seed, the same data order
    assert first_loss("c", 0, 1) != base  # another data order


def test_resume_without_checkpoint_is_refused(tmp_path: Path) -> None:
    proc = run_cli("train", tiny_recipe(tmp_path), "--resume")
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr


def test_tensorboard_event_files_hold_the_logged_metrics(tmp_path: Path) -> None:
    """`report_to: [tensorboard]` writes event files into <run>/tensorboard/ whose train/loss scalars are the losses
    of metrics.jsonl, step by step (read back with TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 3, "report_to": ["tensorboard"]})
    run_cli("train", recipe, check=True)
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, list((tmp_path / "run").rglob("events*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    scalars = {e.step: e.value for e in acc.Scalars("train/loss")}
    logged = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "run") if "loss" in m}
    assert sorted(scalars) == sorted(logged) == [1, 2, 3]
    assert [scalars[s] for s in (1, 2, 3)] == pytest.approx([logged[s] for s in (1, 2, 3)], rel=1e-6)  # float32 storage


def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    recipe = tiny_recipe(tmp_path, trainer={"report_to": ["wandb"]})
    proc = run_cli("train", recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "trainer.report_to: wandb is not installed: pip install wandb" in proc.stderr
    assert not (tmp_path / "run").exists()
