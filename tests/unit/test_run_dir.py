"""run_dir without training: the header files a resume rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe
from tunekit import run_dir
from tunekit.recipe.load import load_recipe


def test_a_resume_with_a_longer_run_keeps_the_data_paths_in_the_resolved_recipe(tmp_path: Path) -> None:
    """The recipes are compared without their data paths (moved files with the same contents are fine), but the
    one written back is the real one: `path: null` there broke `tunekit eval RUN` and the next resume."""
    out = tmp_path / "run"
    out.mkdir()
    first = load_recipe(tiny_recipe(tmp_path), [])
    files = {"train": {"a.jsonl": "0" * 64}}
    run_dir.write_run_header(out, first, files)
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    longer = load_recipe(tiny_recipe(tmp_path), ["trainer.max_steps=20"])
    run_dir.write_run_header(out, longer, files, resume=True)
    resolved = yaml.safe_load((out / run_dir.RESOLVED).read_text())
    assert resolved["trainer"]["max_steps"] == 20
    assert resolved["data"]["train"][0]["path"] == "builtin:quickstart/train.jsonl"


def test_overwrite_deletes_a_resumed_runs_resumes_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resumes.jsonl is tunekit's (written by --resume): --overwrite of a resumed run deletes it, not refuse."""
    monkeypatch.setenv(run_dir.LOCK_ENV, "")  # restored afterwards: the lock's env var is not left to later tests
    out = tmp_path / "run"
    run_dir.prepare_run_dir(out, resume=False, overwrite=False)
    for name in ("summary.json", run_dir.RESUMES):
        (out / name).write_text("{}\n")
    run_dir.prepare_run_dir(out, resume=False, overwrite=True)
    assert not (out / run_dir.RESUMES).exists() and (out / run_dir.MARKER).is_file()
