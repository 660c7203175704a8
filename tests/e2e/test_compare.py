"""`tunekit compare` as a user runs it: a grid of variants trained by real `tunekit train` processes on the builtin
tiny model, compare.json / compare.md / compare.png, failed variants listed, and a rerun that skips finished
variants, resumes from checkpoints and refuses to mix recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_cli, tiny_recipe

EVAL = [{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}]


def mtimes(parent: Path) -> dict[str, float]:
    return {str(p.relative_to(parent)): p.stat().st_mtime for p in parent.glob("*/summary.json")}


def test_compare_two_variants_table_plot_listing_and_rerun(tmp_path: Path) -> None:
    """2 variants x 3 steps train; the 2 combinations ia3 cannot take (`method.r`) are listed, not run; a rerun
    trains nothing."""
    recipe = tiny_recipe(tmp_path, data={"eval": EVAL})
    parent = tmp_path / "cmp"
    args = ("compare", recipe, "--vary", "method.name=lora,ia3", "--vary", "method.r=4,8", "--steps", "3",
            "--out", parent)
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "[1/4] method.name=lora,method.r=4: training" in proc.stderr
    assert "[2/4] method.name=lora,method.r=8: finished in" in proc.stderr
    assert "[3/4] method.name=ia3,method.r=4: not a valid recipe, not run" in proc.stderr

    doc = json.loads((parent / "compare.json").read_text())
    assert doc["varied"] == {"method.name": ["lora", "ia3"], "method.r": ["4", "8"]}
    r4, r8, bad4, bad8 = doc["variants"]
    assert [v["status"] for v in doc["variants"]] == ["finished", "finished", "invalid", "invalid"]
    assert r4["steps"] == r8["steps"] == 3
    assert 0 < r4["trainable_params"] < r8["trainable_params"]  # rank 4 vs 8
    for v in (r4, r8):
        assert v["final_loss"] > 0 and v["eval_loss"] > 0 and v["tokens_per_s"] > 0 and v["peak_memory_gb"] > 0
        assert v["wall_s"] >= v["train_s"] > 0 and "mean_token_accuracy" in v["eval"]
        assert (parent / v["dir"] / "train.log").read_text().startswith("$ ")
        assert read_metrics(parent / v["dir"])[-1]["step"] == 3
    assert "unknown key `r`" in bad4["reason"] and not (parent / bad4["dir"]).exists()

    md = (parent / "compare.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| `method.name=lora,method.r=8`"))
    assert f"| finished | {r8['trainable_params']} |" in row and f"| {r8['final_loss']} |" in row
    assert "| `method.name=ia3,method.r=8` | invalid |" in md
    assert "## Not finished" in md and "override `method.r=8`: method.r: unknown key `r`" in md
    assert "![loss curves](compare.png)" in md
    assert (parent / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = mtimes(parent)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("(same recipe): skipped") == 2 and ": training" not in again.stderr
    assert mtimes(parent) == before  # nothing retrained
    doc2 = json.loads((parent / "compare.json").read_text())
    assert [v.get("reused") for v in doc2["variants"][:2]] == [True, True]
    assert doc2["variants"][1]["wall_s"] == r8["wall_s"]  # the earlier compare's wall time is kept
    assert "finished (earlier run)" in (parent / "compare.md").read_text()


@pytest.mark.slow  # ~110 s on 2 cores (by hand: make test-all); the default test covers the common path
def test_compare_train_failure_method_switch_resume_and_changed_recipe(tmp_path: Path) -> None:
    """A variant failing in training is listed with its `error:` line; ia3 leaves out LoRA's r/alpha and trains;
    a changed recipe is refused unless --overwrite."""
    recipe = tiny_recipe(tmp_path, output={"save_steps": 1})
    parent = tmp_path / "cmp"
    vary = ("--vary", "method.name=lora,ia3,lora+method.target_modules=[nope]", "--out", parent)
    proc = run_cli("compare", recipe, *vary, "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    lora, ia3, nope = json.loads((parent / "compare.json").read_text())["variants"]
    assert (lora["status"], ia3["status"], nope["status"]) == ("finished", "finished", "failed")
    assert sorted(ia3["left_out"]) == ["method.alpha", "method.r"] and ia3["trainable_params"] > 0
    assert nope["reason"].startswith("error: ") and "Target modules {'nope'} not found" in nope["reason"]
    assert nope["name"] == "method.name=lora+method.target_modules=[nope]" and "[" not in nope["dir"]
    assert "[3/3] method.name=lora+method.target_modules=[nope]: failed after" in proc.stderr
    assert "not finished: method.name=lora+method.target_modules=[nope]" in proc.stderr
    md = (parent / "compare.md").read_text()
    assert "left out `method.r`, `method.alpha`" in md and "Target modules {'nope'} not found" in md

    changed = ("compare", recipe, "trainer.learning_rate=0.02", *vary, "--steps", "2")
    refused = run_cli(*changed)
    assert refused.returncode == 2 and "holds a run of another recipe (changed: trainer.learning_rate)" in \
        refused.stderr and "Traceback" not in refused.stderr
    redone = run_cli(*changed, "--overwrite")
    assert redone.returncode == 0 and redone.stderr.count("again from step 0: --overwrite") == 2


def test_a_rerun_with_other_steps_is_refused_or_retrained_never_resumed(tmp_path: Path) -> None:
    """A finished 2-step variant resumed to 3 steps would train step 3 on the 2-step schedule (learning rate 0):
    other --steps is refused naming the flag; with --overwrite the variant trains again from step 0 on the 3-step
    schedule, and compare.md says so."""
    recipe = tiny_recipe(tmp_path, output={"save_steps": 1})
    parent = tmp_path / "cmp"
    args = ("compare", recipe, "--vary", "method.name=lora", "--out", parent)
    run_cli(*args, "--steps", "2", check=True)
    refused = run_cli(*args, "--steps", "3")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "--steps 3:" in refused.stderr and "trainer.max_steps=2" in refused.stderr
    assert "--overwrite" in refused.stderr and "another --out" in refused.stderr
    run_cli(*args, "--steps", "3", "--overwrite", check=True)
    rows = [r for r in read_metrics(parent / "method.name=lora") if "learning_rate" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["learning_rate"] > 0 for r in rows)
    md = (parent / "compare.md").read_text()
    assert "trained again from step 0 (--overwrite): the earlier run's recipe differed in `trainer.max_steps`" in md
