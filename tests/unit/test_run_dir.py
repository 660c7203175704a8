"""run_dir without training: the header files a resume rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe
from tunekit import checkpoints, run_dir
from tunekit.errors import UserError
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
    record = run_dir.write_run_header(out, longer, files, resume=True)
    assert yaml.safe_load((out / run_dir.RESOLVED).read_text())["trainer"]["max_steps"] == 8  # not before it loaded
    record.commit(out / "checkpoints" / "checkpoint-2")
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


def test_local_reference_models_and_reward_files_are_recorded_absolute(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative `trainer.ref_model` directory or python reward `file` resolved against the training cwd only:
    `tunekit eval/merge RUN` or `--resume` from elsewhere read another path (a ref model dir was taken for a hub
    id). A run recorded with the relative path (before this) resumes without a spurious recipe change."""
    from tunekit.pipeline import absolute_inputs

    recipes = Path(__file__).parents[2] / "recipes"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "refmodel").mkdir()
    (tmp_path / "score.py").write_text("def reward(completions, **kwargs):\n    return [0.0 for _ in completions]\n")
    dpo = load_recipe(recipes / "dpo.yaml", ["trainer.ref_model=refmodel"])
    reft = load_recipe(recipes / "reft.yaml", ['trainer.rl.rewards=[{type: python, file: score.py, function: reward}]'])
    absolute_inputs(dpo)
    absolute_inputs(reft)
    assert dpo.trainer.ref_model == str(tmp_path / "refmodel")
    assert reft.trainer.rl.rewards[0].file == str(tmp_path / "score.py")

    out = tmp_path / "run"
    out.mkdir()
    files = {"train": {"a.jsonl": "0" * 64}}
    run_dir.write_run_header(out, load_recipe(recipes / "dpo.yaml", ["trainer.ref_model=refmodel"]), files)
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    run_dir.write_run_header(out, dpo, files, resume=True)  # not refused
    other = load_recipe(recipes / "dpo.yaml", ["trainer.ref_model=/elsewhere"])
    with pytest.raises(UserError, match="trainer.ref_model"):
        run_dir.write_run_header(out, other, files, resume=True)


def test_a_legacy_checkpoints_truncated_files_are_found_without_loading(tmp_path: Path) -> None:
    """A checkpoint without a manifest (older tunekit, or killed before it) was checked for trainer_state.json only:
    a truncated safetensors or torch file reached the loader (a raw SafetensorError). Their own structure tells:
    safetensors' header gives the file's length, a torch zip ends with its directory."""
    import torch
    from safetensors.torch import save_file

    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text('{"global_step": 2}')
    save_file({"w": torch.ones(64, 64)}, str(ckpt / "adapter_model.safetensors"))
    torch.save({"state": torch.zeros(64)}, ckpt / "optimizer.pt")
    assert checkpoints.checkpoint_problem(ckpt, legacy=True) is None
    for name in ("adapter_model.safetensors", "optimizer.pt"):
        path = ckpt / name
        whole = path.read_bytes()
        path.write_bytes(whole[:-100])
        assert checkpoints.checkpoint_problem(ckpt, legacy=True).startswith(f"{name} is truncated")
        path.write_bytes(whole)
    (ckpt / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    assert "adapter_model.safetensors" in checkpoints.checkpoint_problem(ckpt, legacy=True)


def test_a_run_recorded_by_an_older_tunekit_resumes_without_the_keys_it_lacked(tmp_path: Path) -> None:
    """A recipe.resolved.yaml written before a key existed (data.drop_text_beside_tool_calls, method.use_dora)
    was refused on --resume as a change `None -> False` the user never made; a real change still is."""
    out = tmp_path / "run"
    out.mkdir()
    recipe = load_recipe(tiny_recipe(tmp_path), [])
    files = {"train": {"a.jsonl": "0" * 64}}
    run_dir.write_run_header(out, recipe, files)
    old = yaml.safe_load((out / run_dir.RESOLVED).read_text())
    del old["data"]["drop_text_beside_tool_calls"], old["method"]["use_dora"]
    (out / run_dir.RESOLVED).write_text(yaml.safe_dump(old))
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    run_dir.write_run_header(out, recipe, files, resume=True)  # not refused
    with pytest.raises(UserError, match="method.r: 8 -> 4"):
        run_dir.write_run_header(out, load_recipe(tiny_recipe(tmp_path), ["method.r=4"]), files, resume=True)


def test_resume_without_a_checkpoint_says_what_to_do_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(run_dir.LOCK_ENV, "")  # restored after: prepare_run_dir sets it for its workers
    out = tmp_path / "run"
    with pytest.raises(UserError, match="nothing has run there yet: train without --resume"):
        run_dir.prepare_run_dir(out, resume=True, overwrite=False)
    run_dir.prepare_run_dir(out, resume=False, overwrite=False)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')  # it trained, saving no checkpoint
    with pytest.raises(UserError, match="start again with --overwrite"):
        run_dir.prepare_run_dir(out, resume=True, overwrite=False)


def test_the_resolved_recipe_keeps_non_ascii_paths_readable(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    run_dir.write_yaml(path, {"data": {"train": [{"path": "dätä dir/tr ain.jsonl"}]}})
    text = path.read_text(encoding="utf-8")
    assert "dätä dir/tr ain.jsonl" in text and yaml.safe_load(text)["data"]["train"][0]["path"] == "dätä dir/tr ain.jsonl"
