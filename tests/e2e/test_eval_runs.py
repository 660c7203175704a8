"""`tunekit eval` on the runs users really have: methods that change the sequence length (prompt tuning), runs that
never finished, and runs evaluated from another directory than the one they were trained in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_recipe

pytestmark = pytest.mark.full  # three tiny trainings (~15 s each): `make test-full` (CI)

EVAL = [{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}]


def _train(tmp: Path, **sections: dict) -> Path:
    recipe = tiny_recipe(tmp, data={"eval": EVAL}, trainer={"max_steps": 4, "eval_steps": 4}, **sections)
    run_cli("train", recipe, check=True)
    return tmp / "run"


def test_prompt_tuning_eval_loss_is_the_training_eval_loss(tmp_path: Path) -> None:
    """peft's prompt tuning returns logits for its virtual tokens first: eval scored tokens at positions shifted by
    them (6.225 where training logged 6.253). Same weights, same rows, unpacked both: fp32 reduction order only."""
    run = _train(tmp_path, method={"name": "prompt_tuning", "num_virtual_tokens": 4})
    run_cli("eval", run, "--no-base", check=True)
    task = json.loads((run / "eval" / "report.json").read_text())["tasks"]["heldout-loss"]
    trained = json.loads((run / "summary.json").read_text())["eval"]["eval_loss"]
    assert task["tuned"]["loss"] == pytest.approx(trained, rel=1e-4)


def test_a_run_without_final_is_evaluated_at_its_checkpoint_and_says_so(tmp_path: Path) -> None:
    """An interrupted run (no final/) and a torn newest checkpoint: eval names the weights it scores and the
    checkpoint it passed over, and finishes (it crashed writing final/README.md)."""
    run = _train(tmp_path, output={"dir": str(tmp_path / "run"), "save_steps": 2})
    shutil.rmtree(run / "final")
    newest = run / "checkpoints" / "checkpoint-4"
    weights = next(newest.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # torn: killed while saving
    proc = run_cli("eval", run, "--no-base")
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "checkpoint-2 (the run has no final/" in said and "passed over, incomplete: checkpoint-4" in said
    assert not (run / "final").exists()


def test_eval_from_another_directory_never_scores_another_file(tmp_path: Path) -> None:
    """The run's recipe keeps relative data paths: from another directory a different file of the same name was
    evaluated silently. Now the files are checked against data.json's sha256 (and a missing one says where)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rows = (Path(__file__).resolve().parents[2] / "tunekit/assets/data/quickstart/eval.jsonl").read_text().splitlines()
    (tmp_path / "a" / "mine.jsonl").write_text("\n".join(rows[:40]) + "\n")
    (tmp_path / "b" / "mine.jsonl").write_text("\n".join(rows[10:50]) + "\n")
    recipe = tiny_recipe(tmp_path / "a", data={"eval": [{"path": "mine.jsonl", "format": "messages"}]},
                         trainer={"max_steps": 2}, output={"dir": str(tmp_path / "a" / "run")})
    run_cli("train", recipe, cwd=tmp_path / "a", check=True)
    proc = run_cli("eval", tmp_path / "a" / "run", "--no-base", "--out", tmp_path / "ev", cwd=tmp_path / "b")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    said = " ".join(proc.stderr.split())
    assert "`mine.jsonl` is not what it was trained with (sha256 differs" in said and "--task-file" in said
    run_cli("eval", tmp_path / "a" / "run", "--no-base", "--out", tmp_path / "ev", cwd=tmp_path / "a", check=True)
