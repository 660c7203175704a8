"""Checkpoints a run can trust: each ends with a manifest of its files' sizes, `--resume` skips a newer checkpoint
that does not match it (torn by a crash or a full disk) and goes on from the previous good one, and a default
time-based save policy. Real CLI runs on the builtin tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import losses, run_cli, tiny_recipe
from tunekit.files import file_sha256


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-step run with a checkpoint at every step."""
    tmp = tmp_path_factory.mktemp("three")
    recipe = tiny_recipe(tmp, trainer={"max_steps": 3}, output={"dir": str(tmp / "run"), "save_steps": 1})
    run_cli("train", recipe, check=True)
    return tmp / "run"


def squash(text: str) -> str:
    """Text without whitespace: rich wraps long lines (and paths) at the terminal width."""
    return "".join(text.split())


def stopped_copy(run: Path, tmp: Path) -> Path:
    """The run as it was when its last checkpoint had been written (no final/, no summary.json)."""
    copy = tmp / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "final")
    (copy / "summary.json").unlink()
    return copy


def test_every_checkpoint_has_a_manifest_of_its_files(three_steps: Path) -> None:
    for step in (1, 2, 3):
        ckpt = three_steps / "checkpoints" / f"checkpoint-{step}"
        files = json.loads((ckpt / "tunekit-manifest.json").read_text())["files"]
        assert {"trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "rng_state.pth"} <= set(files)
        assert all((ckpt / name).stat().st_size == entry["size"] for name, entry in files.items())
        assert all(file_sha256(ckpt / name) == entry["sha256"] for name, entry in files.items())


@pytest.mark.parametrize("torn", ["trainer_state.json", "optimizer.pt", "adapter_model.safetensors", "rng_state.pth"])
def test_resume_falls_back_from_a_torn_checkpoint(three_steps: Path, tmp_path: Path, torn: str) -> None:
    run = stopped_copy(three_steps, tmp_path)
    path = run / "checkpoints" / "checkpoint-3" / torn
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 3}, output={"dir": str(run), "save_steps": 1})
    proc = run_cli("train", recipe, "--resume")
    err = squash(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "notice:checkpoint-3isincomplete" in err and torn in err
    assert squash(f"resuming from {run}/checkpoints/checkpoint-2") in err
    assert (run / "checkpoints" / "torn" / "checkpoint-3" / torn).is_file()  # set aside, not deleted
    assert json.loads((run / "summary.json").read_text())["global_step"] == 3
    assert losses(run) == pytest.approx(losses(three_steps), abs=1e-4)


def test_resume_falls_back_from_a_checkpoint_damaged_in_place(three_steps: Path, tmp_path: Path) -> None:
    """One flipped byte in the newest checkpoint's weights (same size: what a bad copy or disk gives) is caught by the
    manifest's sha256; --resume goes on from the previous checkpoint and ends like the uninterrupted run."""
    run = stopped_copy(three_steps, tmp_path)
    path = run / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes: the file still loads, with a wrong weight
    path.write_bytes(bytes(data))
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 3}, output={"dir": str(run), "save_steps": 1})
    proc = run_cli("train", recipe, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = squash(proc.stderr)
    assert squash("adapter_model.safetensors does not have the content the save wrote (sha256 differs)") in err
    assert squash(f"resuming from {run}/checkpoints/checkpoint-2") in err
    assert losses(run) == pytest.approx(losses(three_steps), abs=1e-4)


def test_a_checkpoint_without_its_manifest_is_not_resumed_from(three_steps: Path, tmp_path: Path) -> None:
    run = stopped_copy(three_steps, tmp_path)
    (run / "checkpoints" / "checkpoint-3" / "tunekit-manifest.json").unlink()  # killed before the save finished
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 3}, output={"dir": str(run), "save_steps": 1})
    proc = run_cli("train", recipe, "--resume", check=True)
    assert squash("tunekit-manifest.json is missing (the save did not finish)") in squash(proc.stderr)


def test_resume_from_the_last_steps_checkpoint_trains_no_step(three_steps: Path, tmp_path: Path) -> None:
    """Stopped after checkpoint-3 of 3 was written (a kill, SIGTERM or full disk during the final save): --resume
    trained a 4th step on a new batch (summary: 4 steps; with a schedule not ending at 0 other weights). Now it
    trains none: final/ is written from checkpoint-3 and equals the uninterrupted run's. (The resume's constant
    schedule, let through with --allow-changes, is what would have moved the weights in that 4th step.)"""
    from safetensors.torch import load_file

    run = stopped_copy(three_steps, tmp_path)
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 3}, output={"dir": str(run), "save_steps": 1})
    proc = run_cli("train", recipe, "--resume", "--allow-changes", "trainer.lr_scheduler=constant", check=True)
    assert squash("checkpoint-3 is the end of training (step 3 of 3): no step to train") in squash(proc.stderr)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["resumed_from"].endswith("checkpoint-3")
    assert not (run / "checkpoints" / "checkpoint-4").exists()
    assert (run / "metrics.jsonl").read_text() == (three_steps / "metrics.jsonl").read_text()
    ours, whole = (load_file(r / "final" / "adapter_model.safetensors") for r in (run, three_steps))
    assert ours.keys() == whole.keys() and all((ours[k] == whole[k]).all() for k in ours)
    assert (run / "final" / "tokenizer_config.json").is_file()


@pytest.mark.full
def test_resume_from_the_end_of_a_num_epochs_schedule_trains_no_step(tmp_path: Path) -> None:
    """trainer.num_epochs 1.5 on 8 rows (2 steps an epoch): 3 steps. --resume from checkpoint-3 without final/
    trained a 4th step (the Trainer goes on in the second epoch); now none."""
    rows = tmp_path / "train.jsonl"
    row = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}
    rows.write_text((json.dumps(row) + "\n") * 8)
    recipe = tiny_recipe(tmp_path, trainer={"num_epochs": 1.5, "max_steps": -1, "lr_scheduler": "constant"},
                         data={"train": [{"path": str(rows), "format": "messages"}]}, output={"save_steps": 1})
    run_cli("train", recipe, check=True)
    run = tmp_path / "run"
    shutil.rmtree(run / "final")
    (run / "summary.json").unlink()
    run_cli("train", recipe, "--resume", check=True)
    assert json.loads((run / "summary.json").read_text())["global_step"] == 3
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))[-1] == "checkpoint-3"


def test_resume_refuses_when_every_checkpoint_is_damaged_in_place(three_steps: Path, tmp_path: Path) -> None:
    """Every checkpoint fails the sha256 check: --resume set them all aside and silently trained from step 0 (exit 0,
    resumes.jsonl naming a checkpoint set aside, metrics.jsonl holding the steps twice). Now it refuses, exit 2."""
    run = stopped_copy(three_steps, tmp_path)
    for step in (1, 2, 3):
        path = run / "checkpoints" / f"checkpoint-{step}" / "optimizer.pt"
        data = bytearray(path.read_bytes())
        data[-30] ^= 0x01  # same size: only the sha256 tells
        path.write_bytes(bytes(data))
    metrics = (run / "metrics.jsonl").read_text()
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 3}, output={"dir": str(run), "save_steps": 1})
    proc = run_cli("train", recipe, "--resume")
    err = squash(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert squash(f"--resume: no usable checkpoint (all 3 set aside to {run}/checkpoints/torn:") in err
    assert squash("optimizer.pt does not have the content the save wrote") in err and "--overwrite" in err
    assert (run / "metrics.jsonl").read_text() == metrics
    assert not (run / "resumes.jsonl").exists() and not (run / "summary.json").exists()
    proc = run_cli("train", recipe, "--resume")  # the next try says where they went
    assert proc.returncode == 2 and squash(f"set aside to {run}/checkpoints/torn") in squash(proc.stderr)


def test_a_change_that_cannot_load_the_checkpoint_is_refused_and_recorded_nowhere(three_steps: Path,
                                                                                   tmp_path: Path) -> None:
    """`--resume --allow-changes method.r=4` (the run has r=8): a raw size-mismatch traceback, after
    recipe.resolved.yaml and resumes.jsonl were rewritten; the plain --resume after it was refused with a false diff
    (method.r: 4 -> 8). Now: exit 2 naming the change, the run dir as it was, and the plain --resume finishes."""
    run = stopped_copy(three_steps, tmp_path)
    shutil.rmtree(run / "checkpoints" / "checkpoint-3")
    header = {n: (run / n).read_bytes() for n in ("recipe.resolved.yaml", "data.json", "versions.json")}
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 3}, output={"dir": str(run), "save_steps": 1})
    proc = run_cli("train", recipe, "--resume", "--allow-changes", "method.r=4")
    err = squash(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert squash(f"--resume: {run}/checkpoints/checkpoint-2 cannot be loaded with this recipe") in err
    assert squash("method.r: 8 -> 4") in err and "sizemismatch" in err
    assert {n: (run / n).read_bytes() for n in header} == header and not (run / "resumes.jsonl").exists()
    run_cli("train", recipe, "--resume", check=True)
    assert json.loads((run / "summary.json").read_text())["global_step"] == 3
    (record,) = [json.loads(ln) for ln in (run / "resumes.jsonl").read_text().splitlines()]
    assert record["checkpoint"] == str(run / "checkpoints" / "checkpoint-2")


@pytest.mark.parametrize("torn", ["adapter_model.safetensors", pytest.param("optimizer.pt", marks=pytest.mark.full)])
def test_a_legacy_run_falls_back_from_a_truncated_checkpoint_file(three_steps: Path, tmp_path: Path, torn: str) -> None:
    """Checkpoints without manifests (an older tunekit; a run whose only checkpoint was killed before its manifest):
    a truncated file gave a raw SafetensorError traceback. Now the checkpoint is set aside naming the file, and the
    run goes on from the one before."""
    run = stopped_copy(three_steps, tmp_path)
    for manifest in (run / "checkpoints").glob("checkpoint-*/tunekit-manifest.json"):
        manifest.unlink()
    path = run / "checkpoints" / "checkpoint-3" / torn
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 100])
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 3}, output={"dir": str(run), "save_steps": 1})
    proc = run_cli("train", recipe, "--resume")
    err = squash(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert squash(f"notice: checkpoint-3 is incomplete ({torn} is truncated") in err
    assert squash(f"resuming from {run}/checkpoints/checkpoint-2") in err
    assert losses(run) == pytest.approx(losses(three_steps), abs=1e-4)


def test_time_based_saves_by_default(tmp_path: Path) -> None:
    """Without save_steps a run still checkpoints by time (output.save_minutes, default 30)."""
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 2}, output={"dir": str(tmp_path / "run")})
    proc = run_cli("validate", recipe, check=True)
    assert "save_minutes: 30.0" in proc.stdout
    run_cli("train", recipe, "output.save_minutes=0.000001", check=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2"]


def _mount_small_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return ok.returncode == 0


@pytest.mark.full
def test_a_full_disk_is_a_clear_error_and_the_run_resumes(tmp_path: Path) -> None:
    """A 3 MB tmpfs fills during a save: exit 2 naming the last complete checkpoint; with space, --resume finishes."""
    small = tmp_path / "small"
    if os.geteuid() != 0 or not _mount_small_tmpfs(small, "3m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        recipe = tiny_recipe(tmp_path, trainer={"max_steps": 30}, output={"dir": str(small / "run"), "save_steps": 1})
        proc = run_cli("train", recipe)
        err = squash(proc.stderr)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert squash("the disk is full") in err and squash("free space, then --resume") in err
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        proc = run_cli("train", recipe, "--resume", "output.save_total_limit=2", check=True)
        assert json.loads((small / "run" / "summary.json").read_text())["global_step"] == 30
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


@pytest.mark.full
def test_resuming_with_more_steps_continues_on_the_new_schedule(tmp_path: Path) -> None:
    """`--resume trainer.max_steps=8` on a finished 4-step run (linear decay): the first resumed step ran at the
    old schedule's last rate (0: no update at all), then jumped onto the 8-step curve. Now every resumed step has
    the rate an uninterrupted 8-step run has at that step (the same float: base rate x the schedule's factor)."""
    def rates(run: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}

    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 4, "lr_scheduler": "linear", "learning_rate": 1e-2},
                         output={"dir": str(tmp_path / "run"), "save_steps": 2})
    run_cli("train", recipe, check=True)
    run_cli("train", recipe, "trainer.max_steps=8", "--resume", check=True)
    run_cli("train", recipe, "trainer.max_steps=8", f"output.dir={tmp_path / 'run8'}", check=True)
    resumed, whole = rates(tmp_path / "run"), rates(tmp_path / "run8")
    assert [resumed[s] for s in range(5, 9)] == [whole[s] for s in range(5, 9)]
    assert resumed[5] > 0
