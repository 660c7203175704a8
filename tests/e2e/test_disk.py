"""A full, read-only or size-limited disk wherever a run writes: exit 2 with a message naming the path and what to
do next, and nothing half-written left that a later command takes as valid (a 0-byte marker, an empty
resumes.jsonl, half a final/).

The portable tests cap the size of the files the CLI process may write (RLIMIT_FSIZE: a write past it fails with
EFBIG, the way a write onto a full disk fails with ENOSPC), which needs no privileges. The tmpfs tests (a really
full and a really read-only filesystem) need root with mount rights and skip without them."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli, tiny_recipe

EVAL = [{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}]


def squash(text: str) -> str:
    return "".join(text.split())


def run_limited(limit: int, *args: str | Path) -> subprocess.CompletedProcess:
    """`tunekit ARGS` in a process that may write no file past `limit` bytes (SIGXFSZ ignored: the write fails
    with EFBIG instead of killing the process)."""
    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "tunekit", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(), preexec_fn=cap, timeout=600)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run with eval data and a checkpoint at step 2 (it also fills the builtin-model and data
    caches, which the limited runs below then only read)."""
    tmp = tmp_path_factory.mktemp("finished")
    recipe = tiny_recipe(tmp, data={"eval": EVAL}, trainer={"max_steps": 2},
                         output={"dir": str(tmp / "run"), "save_steps": 2})
    run_cli("train", recipe, check=True)
    return tmp / "run"


def test_a_run_that_cannot_write_its_marker_exits_2_and_leaves_no_empty_marker(tmp_path: Path) -> None:
    """It was a traceback (exit 1) leaving a 0-byte .tunekit-run that a later run took as tunekit's marker."""
    run = tmp_path / "run"
    proc = run_limited(0, "train", tiny_recipe(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = squash(proc.stderr)
    assert squash(f"cannot write {run}/.tunekit-run") in err and "ulimit-f" in err
    assert squash("then run the same command again") in err
    assert list(run.iterdir()) == []  # neither the marker nor its temp file


def test_a_resume_that_cannot_write_its_record_exits_2_and_leaves_the_run_as_it_was(finished: Path,
                                                                                   tmp_path: Path) -> None:
    """--resume onto a full disk died in write_run_header, leaving an empty resumes.jsonl behind."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()  # stopped after its last checkpoint: --resume has something to do
    recipe = tiny_recipe(tmp_path, data={"eval": EVAL}, trainer={"max_steps": 2},
                         output={"dir": str(run), "save_steps": 2})
    metrics = (run / "metrics.jsonl").read_bytes()
    proc = run_limited(64, "train", recipe, "--resume")  # torch's import writes a 4-byte probe (tempfile)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = squash(proc.stderr)
    # the first write past the limit: metrics.jsonl cut back to the checkpoint (resumes.jsonl is written after it)
    assert squash(f"cannot write {run}/") in err, proc.stderr[-2000:]
    assert (run / "metrics.jsonl").read_bytes() == metrics
    assert squash(f"continue with --resume (from {run}/checkpoints/checkpoint-2)") in err
    assert not (run / "resumes.jsonl").exists()


def test_a_final_save_that_fails_leaves_no_half_final(finished: Path, tmp_path: Path) -> None:
    """Every file of the run fits under 20 kB but the adapter: the final save fails. It was a safetensors
    traceback (exit 1) and a final/ holding only README.md, which eval/chat/merge then tried to load."""
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path, data={"eval": EVAL}, trainer={"max_steps": 2}, output={"dir": str(run)})
    proc = run_limited(20_000, "train", recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = squash(proc.stderr)
    assert squash(f"cannot write {run}/final.tmp") in err
    assert squash("start again with --overwrite (the run wrote no checkpoint to resume from)") in err
    assert not (run / "final").exists() and not (run / "final.tmp").exists()
    assert not (run / "summary.json").exists()


def test_final_is_renamed_into_place_complete_without_training_args(tmp_path: Path) -> None:
    """save_final writes final.tmp/ and renames it: final/ is whole or absent, and never holds transformers'
    training_args.bin (removed before, not by the model card written later: a run stopped between the two kept it)."""
    from tunekit.pipeline import open_run, run_stage
    from tunekit.recipe.load import load_recipe
    from tunekit.trainers.registry import stages

    recipe = load_recipe(tiny_recipe(tmp_path, trainer={"max_steps": 1}))
    inputs = open_run(recipe, resume=False, overwrite=False)
    run_stage(stages(inputs).stages[0], inputs, [])
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").is_file() and (final / "tokenizer_config.json").is_file()
    assert not (final / "training_args.bin").exists() and not (tmp_path / "run" / "final.tmp").exists()


@pytest.mark.full
def test_eval_of_a_run_with_a_half_written_final_uses_its_checkpoint(finished: Path, tmp_path: Path) -> None:
    """A final/ left half written (by a tunekit before final.tmp/, or copied in part) in a run without summary.json:
    eval took it and failed ("no model here"); now it scores the latest complete checkpoint and says why."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    for p in (run / "final").iterdir():
        if p.name != "README.md":
            p.unlink()
    proc = run_cli("eval", run, "--no-base")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = squash(proc.stderr)
    assert squash(f"weights: {run}/checkpoints/checkpoint-2 (the run did not finish (no summary.json), so its "
                  "final/ is not used") in said
    assert squash("Finish the run with `tunekit train RECIPE --resume`") in said


def _mount(where: Path, options: str) -> bool:
    where.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "tmpfs"
    if not _mount(where, "size=16m"):
        pytest.skip("needs root and the right to mount a tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def _pages(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(-(-p.stat().st_size // 4096) for p in files)


@pytest.mark.full
def test_a_disk_that_fills_during_the_final_save_then_resume_finishes(finished: Path, tmpfs: Path,
                                                                      tmp_path: Path) -> None:
    """A tmpfs with room for the run's files and its checkpoint but not for final/: exit 2 naming the checkpoint
    to resume from, no final/ or final.tmp/; with space freed, --resume writes a complete final/."""
    run = tmpfs / "run"
    needed = sum(_pages(p) for p in finished.iterdir() if p.name not in ("final", "summary.json"))
    fill = (16 << 20) // 4096 - needed - 4 - _pages(finished / "final") // 2  # 4 pages: small files' slack
    (tmpfs / "filler").write_bytes(b"\0" * (fill * 4096))
    recipe = tiny_recipe(tmp_path, data={"eval": EVAL}, trainer={"max_steps": 2},
                         output={"dir": str(run), "save_steps": 2})
    proc = run_cli("train", recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = squash(proc.stderr)
    assert squash(f"the disk is full (writing {run}/final.tmp") in err
    assert squash(f"continue with --resume (from {run}/checkpoints/checkpoint-2)") in err
    assert not (run / "final").exists() and not (run / "final.tmp").exists()
    (tmpfs / "filler").unlink()
    run_cli("train", recipe, "--resume", check=True)
    assert (run / "final" / "adapter_model.safetensors").is_file() and (run / "summary.json").is_file()


def test_a_read_only_output_dir_is_a_clear_error(finished: Path, tmpfs: Path, tmp_path: Path) -> None:
    """A fresh run (mkdir) and a --resume (the lock file) on a read-only filesystem: exit 2 naming output.dir."""
    shutil.copytree(finished, tmpfs / "run")
    (tmpfs / "run" / "summary.json").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    recipe = tiny_recipe(tmp_path, data={"eval": EVAL}, trainer={"max_steps": 2},
                         output={"dir": str(tmpfs / "new"), "save_steps": 2})
    proc = run_cli("train", recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert squash(f"`output.dir` is on a read-only filesystem (cannot write {tmpfs}/new)") in squash(proc.stderr)
    proc = run_cli("train", recipe, f"output.dir={tmpfs / 'run'}", "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = squash(proc.stderr)
    assert squash(f"(cannot write {tmpfs}/run/.tunekit-lock): make it writable or move the run dir") in err
    assert squash(f"continue with --resume (from {tmpfs}/run/checkpoints/checkpoint-2)") in err
    assert json.loads((tmpfs / "run" / "data.json").read_text())  # untouched
