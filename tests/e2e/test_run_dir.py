"""The run directory is tunekit's alone: a marker in every dir it makes, `--overwrite` deletes only such a dir
(never a user's files), a run that stopped before training leaves a dir the same command reuses, and a lock
refuses a second run on the same dir. Real CLI runs on the builtin tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli, tiny_recipe
from tunekit.paths import asset

GOOD_ROW = '{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}\n'


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run with a checkpoint at every step, on a data file of its own (tmp/train.jsonl)."""
    tmp = tmp_path_factory.mktemp("finished")
    shutil.copyfile(asset("data", "quickstart", "train.jsonl"), tmp / "train.jsonl")
    recipe = tiny_recipe(tmp, trainer={"max_steps": 2}, output={"dir": str(tmp / "run"), "save_steps": 1},
                         data={"train": [{"path": str(tmp / "train.jsonl"), "format": "messages"}]})
    run_cli("train", recipe, check=True)
    return tmp / "run"


def copy_run(finished: Path, tmp: Path, stopped_at: int | None = None) -> tuple[Path, Path]:
    """(recipe, run): a copy of the finished run and its inputs; with `stopped_at`, as it was after that step's
    checkpoint (no later checkpoints, no final/, no summary.json)."""
    shutil.copytree(finished.parent, tmp / "copy")
    run, recipe = tmp / "copy" / "run", tmp / "copy" / "recipe.yaml"
    text = recipe.read_text().replace(str(finished.parent), str(tmp / "copy"))
    recipe.write_text(text)
    if stopped_at is not None:
        for p in [run / "final", run / "summary.json", *(run / "checkpoints").glob("checkpoint-*")]:
            if p.name.startswith("checkpoint-") and int(p.name.split("-")[1]) <= stopped_at:
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        keep = [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["step"] <= stopped_at]
        (run / "metrics.jsonl").write_text("".join(k + "\n" for k in keep))
    return recipe, run


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_overwrite_never_deletes_a_users_dir(tmp_path: Path) -> None:
    """`output.dir` pointing at the folder that holds the user's recipe and data: --overwrite deletes nothing."""
    (tmp_path / "train.jsonl").write_text(GOOD_ROW * 8)
    recipe = tiny_recipe(tmp_path, data={"train": [{"path": str(tmp_path / "train.jsonl"), "format": "messages"}]},
                         output={"dir": str(tmp_path)})
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("train", recipe, "--overwrite")
    assert proc.returncode == 2 and "not made by tunekit" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_overwrite_refuses_a_run_holding_other_files(finished: Path, tmp_path: Path) -> None:
    recipe, run = copy_run(finished, tmp_path)
    (run / "notes.txt").write_text("mine")
    proc = run_cli("train", recipe, "trainer.max_steps=1", "--overwrite")
    assert proc.returncode == 2 and "notes.txt" in proc.stderr and "nothing was deleted" in proc.stderr
    assert (run / "notes.txt").is_file() and (run / "final").is_dir() and (run / "checkpoints").is_dir()
    (run / "notes.txt").unlink()
    run_cli("train", recipe, "trainer.max_steps=1", "--overwrite", check=True)  # only tunekit's files: replaced
    assert json.loads((run / "summary.json").read_text())["global_step"] == 1
    assert not (run / "checkpoints" / "checkpoint-2").exists()
    assert (run / ".tunekit-run").is_file()


def test_output_overwrite_in_a_recipe_is_refused(tmp_path: Path) -> None:
    proc = run_cli("validate", tiny_recipe(tmp_path, output={"dir": str(tmp_path / "r"), "overwrite": True}))
    assert proc.returncode == 2 and "output.overwrite was removed" in proc.stderr and "--overwrite" in proc.stderr
    # what every run written before the removal has in its recipe.resolved.yaml (eval and merge read it)
    run_cli("validate", tiny_recipe(tmp_path, output={"dir": str(tmp_path / "r"), "overwrite": False}), check=True)


@pytest.mark.full
def test_a_run_that_failed_before_training_can_be_rerun(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(GOOD_ROW * 4 + '{"messages": 3}\n')
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 1},
                         data={"train": [{"path": str(data), "format": "messages"}]})
    proc = run_cli("train", recipe)
    assert proc.returncode == 2 and "train.jsonl" in proc.stderr
    assert (tmp_path / "run" / "recipe.resolved.yaml").is_file()  # the header was written before the data stage
    data.write_text(GOOD_ROW * 8)
    proc = run_cli("train", recipe, "model.path=nobody-tunekit/no-such-model")
    assert proc.returncode == 2 and "no-such-model" in proc.stderr and "Traceback" not in proc.stderr
    run_cli("train", recipe, check=True)  # the same command, inputs fixed: the dir is reused
    assert (tmp_path / "run" / "summary.json").is_file()


@pytest.mark.full
def test_a_second_run_on_the_same_dir_is_refused(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 2000})
    first = subprocess.Popen([sys.executable, "-m", "tunekit", "train", str(recipe)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (tmp_path / "run" / "metrics.jsonl").exists():
            assert first.poll() is None and time.time() < deadline, "the first run did not start training"
            time.sleep(0.5)
        for flags in ([], ["--resume"], ["--overwrite"]):
            proc = run_cli("train", recipe, *flags)
            assert proc.returncode == 2 and "in use by another tunekit run" in proc.stderr, (flags, proc.stderr)
    finally:
        first.kill()
        first.wait()
    assert (tmp_path / "run" / "metrics.jsonl").is_file()  # the second run deleted nothing


def test_resume_of_a_finished_run_trains_nothing(finished: Path, tmp_path: Path) -> None:
    recipe, run = copy_run(finished, tmp_path)
    before = snapshot(run)
    proc = run_cli("train", recipe, "--resume", check=True)
    assert "already finished (2 steps" in " ".join(proc.stderr.split())
    assert snapshot(run) == before  # no step, no checkpoint, no rewritten file


def test_resume_with_changed_recipe_or_data_is_refused_with_a_diff(finished: Path, tmp_path: Path) -> None:
    recipe, run = copy_run(finished, tmp_path, stopped_at=1)
    before = snapshot(run)
    proc = run_cli("train", recipe, "--resume", "trainer.learning_rate=0.001", "method.r=4",
                   "trainer.per_device_batch_size=2")  # the global batch changes: refused (with it the same: allowed)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "trainer.learning_rate: 0.005 -> 0.001" in proc.stderr and "method.r: 8 -> 4" in proc.stderr
    assert "trainer.per_device_batch_size: 4 -> 2" in proc.stderr
    with open(recipe.parent / "train.jsonl", "a") as f:
        f.write(GOOD_ROW)
    proc = run_cli("train", recipe, "--resume", "trainer.logging_steps=2", "output.save_steps=5")  # these may change
    assert proc.returncode == 2 and f"data file changed: {recipe.parent / 'train.jsonl'}" in proc.stderr
    assert "--allow-changes" in proc.stderr and "logging_steps" not in proc.stderr
    assert snapshot(run) == before  # recipe.resolved.yaml and data.json not rewritten


def test_resume_allow_changes_continues_and_records_them(finished: Path, tmp_path: Path) -> None:
    recipe, run = copy_run(finished, tmp_path, stopped_at=1)
    with open(recipe.parent / "train.jsonl", "a") as f:
        f.write(GOOD_ROW)
    proc = run_cli("train", recipe, "--resume", "--allow-changes", "trainer.max_steps=3", "trainer.weight_decay=0.1",
                   check=True)
    assert "resuming from" in proc.stderr
    assert json.loads((run / "summary.json").read_text())["global_step"] == 3
    record = [json.loads(ln) for ln in (run / "resumes.jsonl").read_text().splitlines()]
    assert len(record) == 1 and record[0]["checkpoint"].endswith("checkpoint-1")
    changes = record[0]["recipe_changes"]  # also output.dir and data.train: the copy lives elsewhere
    assert changes["trainer.max_steps"] == [2, 3] and changes["trainer.weight_decay"] == [0.0, 0.1]
    assert yaml.safe_load((run / "recipe.resolved.yaml").read_text())["trainer"]["weight_decay"] == 0.1
    assert str(recipe.parent / "train.jsonl") in record[0]["data_changes"]
    assert str(recipe.parent / "train.jsonl") in json.loads((run / "data.json").read_text())["files"]


def test_eval_of_a_run_with_torn_weights_or_a_file_as_out_exits_2(finished: Path, tmp_path: Path) -> None:
    _, run = copy_run(finished, tmp_path)
    (tmp_path / "report").write_text("a file")
    proc = run_cli("eval", run, "--task", "quickstart-loss", "--out", tmp_path / "report")
    assert proc.returncode == 2 and "is a file" in proc.stderr and "Traceback" not in proc.stderr
    weights = run / "final" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    proc = run_cli("eval", run, "--task", "quickstart-loss", "--max-examples", "2", "--no-base")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "the saved weights cannot be read" in " ".join(proc.stderr.split())


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_runs_resolved_recipe_validates_plans_and_trains(method: str, tmp_path: Path) -> None:
    """recipe.resolved.yaml is a working recipe: it holds every peft option, `runtime_config: null` (peft builds
    a LoraRuntimeConfig) and `loftq_config: {}` among them, and each must mean what leaving it out means."""
    recipe = tiny_recipe(tmp_path, method={"name": method, "r": 4, "alpha": 8}, trainer={"max_steps": 1})
    run_cli("train", recipe, check=True)
    resolved = tmp_path / "run" / "recipe.resolved.yaml"
    assert "runtime_config: null" in resolved.read_text()
    assert "valid" in run_cli("validate", resolved, check=True).stdout
    plan = run_cli("plan", resolved, "--no-data", check=True)
    assert "Traceback" not in plan.stderr
    again = run_cli("train", resolved, f"output.dir={tmp_path / 'again'}", check=True)
    assert "loftq_config" not in again.stderr  # peft warns when a LoftQ config comes without init loftq
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["global_step"] == 1


def test_a_run_on_a_relative_model_dir_is_usable_from_another_directory(tmp_path: Path) -> None:
    """model.path `localbase` (relative to the training cwd) is written as its absolute path to the run's
    recipe.resolved.yaml and adapter_config.json; from elsewhere it was taken for a hub id. The recipe's eval task
    files likewise: from elsewhere `tunekit eval RUN` read a file of the same name there (or none)."""
    from tunekit.model.builtin import materialize

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(materialize("builtin:tiny-llama", 0), work / "localbase")
    (work / "qa.jsonl").write_text(json.dumps({"prompt": "2+2?", "answer": "4"}) + "\n")
    (tmp_path / "qa.jsonl").write_text("not the task file\n")  # what the relative path names from tmp_path
    task = {"name": "qa", "kind": "loss", "data": {"path": "qa.jsonl", "format": "qa"}}
    recipe = tiny_recipe(work, model={"path": "localbase", "dtype": "float32"}, trainer={"max_steps": 1},
                         output={"dir": "run"}, eval={"tasks": [task], "compare_base": False})
    run_cli("train", recipe, cwd=work, check=True)
    resolved = yaml.safe_load((work / "run" / "recipe.resolved.yaml").read_text())
    assert resolved["model"]["path"] == str(work / "localbase")
    assert resolved["eval"]["tasks"][0]["data"]["path"] == str(work / "qa.jsonl")
    run_cli("eval", "work/run", "--out", "report", cwd=tmp_path, check=True)
    data = json.loads((tmp_path / "report" / "report.json").read_text())["task_data"]["qa"]
    assert data["path"] == str(work / "qa.jsonl") and len(data["sha256"]) == 64
    adapter = json.loads((work / "run" / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(work / "localbase")
    run_cli("plan", "work/run/recipe.resolved.yaml", "--no-data", cwd=tmp_path, check=True)
    chat = run_cli("chat", "work/run", "--prompt", "hi", "--max-new-tokens", "2", cwd=tmp_path, check=True)
    assert "is a Hugging Face Hub id" not in chat.stderr


@pytest.mark.full
def test_weights_are_readable_as_the_umask_allows(tmp_path: Path) -> None:
    """safetensors writes its files with mode 0600 whatever the umask: final/, checkpoints and merged models could
    not be read by another account (a server). Now they get the mode any other file gets (0644 under umask 022)."""
    import os

    mask = os.umask(0o022)
    try:
        recipe = tiny_recipe(tmp_path, trainer={"max_steps": 1}, output={"dir": str(tmp_path / "run"), "save_steps": 1})
        run_cli("train", recipe, check=True)
        run_cli("merge", tmp_path / "run", "--out", tmp_path / "merged", check=True)
    finally:
        os.umask(mask)
    files = [*tmp_path.glob("run/final/*.safetensors"), *tmp_path.glob("run/checkpoints/*/*.safetensors"),
             *tmp_path.glob("merged/*.safetensors")]
    assert len(files) >= 3
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o644)}
