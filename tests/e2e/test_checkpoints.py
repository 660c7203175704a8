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
from tunekit.run_dir import file_sha256


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
