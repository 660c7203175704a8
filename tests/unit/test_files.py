"""Files written whole or not at all (tunekit/files.py), and what a write cut short leaves in a run dir."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tunekit import run_dir
from tunekit.files import write_failure


def test_leftovers_of_a_write_cut_short_are_tunekits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A header file's temp copy (killed between write and rename) is tunekit's: a dir holding only the header
    is reused by the same command, and --overwrite deletes a final.tmp/ or final.old/ instead of refusing."""
    monkeypatch.setenv(run_dir.LOCK_ENV, "")  # restored afterwards: the lock's env var is not left to later tests
    out = tmp_path / "run"
    run_dir.prepare_run_dir(out, resume=False, overwrite=False)
    (out / "recipe.resolved.yaml.tmp").write_text("model:")
    run_dir.prepare_run_dir(out, resume=False, overwrite=False)  # not started: reused, the leftover removed
    assert sorted(p.name for p in out.iterdir()) == [run_dir.LOCK, run_dir.MARKER]
    for name in ("final.tmp", "final.old"):
        (out / name).mkdir()
    (out / "summary.json.tmp").write_text("{")
    run_dir.prepare_run_dir(out, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [run_dir.LOCK, run_dir.MARKER]


def test_write_failures_are_recognised_through_the_libraries_wrappers() -> None:
    """safetensors and tokenizers say it in words; datasets raises its own error from the writer's OSError."""
    assert write_failure(Exception("No space left on device (os error 28)")) == (errno.ENOSPC, None)
    assert write_failure(OSError(errno.EROFS, "Read-only file system", "/x")) == (errno.EROFS, "/x")
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as e:
            raise RuntimeError("An error occurred while generating the dataset") from e
    except RuntimeError as wrapped:
        assert write_failure(wrapped) == (errno.EDQUOT, None)
    assert write_failure(ValueError("bad row")) is None
    assert write_failure(OSError(errno.ENOENT, "No such file or directory", "/x")) is None
