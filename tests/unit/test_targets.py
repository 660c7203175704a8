"""Which weights eval, chat and merge take from a run directory (`targets.run_weights`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit import checkpoints
from tunekit.errors import UserError
from tunekit.targets import run_weights


def checkpoint(run: Path, step: int) -> Path:
    ckpt = run / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    checkpoints.write_manifest(ckpt)
    return ckpt


def test_a_final_of_a_run_that_did_not_finish_is_passed_over_for_its_checkpoint(tmp_path: Path) -> None:
    """A final/ cut short (only README.md: the disk filled during the final save, before final/ was written to
    final.tmp/ and renamed) in a run without summary.json was taken, and eval/chat/merge failed on it."""
    run = tmp_path / "run"
    ckpt = checkpoint(run, 2)
    (run / "final").mkdir()
    (run / "final" / "README.md").write_text("card")
    assert run_weights(run) == ckpt
    (run / "summary.json").write_text("{}")  # a finished run: its final/
    assert run_weights(run) == run / "final"


def test_a_run_without_summary_or_checkpoint_uses_its_final_and_one_without_weights_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match="the run has no trained weights"):
        run_weights(run)
    (run / "final").mkdir()
    (run / "final" / "adapter_config.json").write_text("{}")
    assert run_weights(run) == run / "final"  # all there is (final/ is renamed into place whole)
