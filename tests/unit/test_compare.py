"""`tunekit compare` without training: --vary parsing, the grid, dir names, validation of every variant, the
decision to skip / resume / retrain a variant's dir, and how a failed run's reason is read from its log."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli, tiny_recipe
from tunekit import run_dir
from tunekit.compare import check, grid, run
from tunekit.errors import UserError


def variants_of(recipe: Path, vary: list[str], overrides: list[str] = (), steps: int | None = None,
                parent: Path = Path("cmp")) -> list[grid.Variant]:
    """What `compare` does before it runs anything (it raises the same UserErrors)."""
    axes = [grid.parse_vary(v) for v in vary]
    grid.check_axes(axes, list(overrides), steps)
    common = [*overrides, *([f"trainer.max_steps={steps}"] if steps is not None else [])]
    variants = grid.expand(axes)
    check.validate_all(recipe, common, variants)
    check.check_usable(variants, axes, common, steps)
    grid.name_variants(variants, parent)
    return variants


def test_vary_values_split_outside_brackets_and_carry_plus_overrides() -> None:
    a = grid.parse_vary("method.target_modules=[q_proj,v_proj],all-linear,{a: 1, b: 2}")
    assert [i.overrides for i in a.items] == [("method.target_modules=[q_proj,v_proj]",),
                                              ("method.target_modules=all-linear",),
                                              ("method.target_modules={a: 1, b: 2}",)]
    a = grid.parse_vary("method.name=lora,lora+method.use_dora=true+method.r=4,ia3")
    assert [i.overrides for i in a.items] == [("method.name=lora",),
                                              ("method.name=lora", "method.use_dora=true", "method.r=4"),
                                              ("method.name=ia3",)]
    assert grid.parse_vary("trainer.learning_rate=1e+3,2e-3").items[0].overrides == ("trainer.learning_rate=1e+3",)


@pytest.mark.parametrize(("text", "message"), [
    ("method.name", "expected KEY=V1,V2"),
    ("method.r=", "a value is empty"),
    ("method.r=4,,8", "a value is empty"),
    ("method..r=4", "empty part"),
    ("method.r=4,4", "method.r=4 given twice"),
])
def test_bad_vary_syntax_is_a_user_error(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        grid.parse_vary(text)


@pytest.mark.parametrize(("vary", "overrides", "steps", "message"), [
    (["method.r=4,8", "method.r=16"], [], None, "varied twice"),
    (["method.r=4,8"], ["method.r=2"], None, "both varied"),
    (["output.dir=a,b"], [], None, "compare sets output.dir"),
    (["method.r=4"], ["output.dir=x"], None, "give --out instead"),
    (["trainer.max_steps=4,8"], [], 3, "--steps sets trainer.max_steps"),
    (["method.name=lora+method.r=4", "method.r=8,16"], [], None, "which --vary method.r=8,16 varies"),
])
def test_keys_given_twice_or_owned_by_compare_are_refused(vary: list, overrides: list, steps: int | None,
                                                          message: str) -> None:
    with pytest.raises(UserError, match=message):
        grid.check_axes([grid.parse_vary(v) for v in vary], overrides, steps)


def test_the_grid_is_the_cartesian_product_first_axis_slowest() -> None:
    axes = [grid.parse_vary("method.name=lora,ia3"), grid.parse_vary("trainer.learning_rate=1e-3,3e-3,1e-2")]
    names = [",".join(i.text for i in v.items) for v in grid.expand(axes)]
    assert len(names) == 6
    assert names[:3] == [f"method.name=lora,trainer.learning_rate={x}" for x in ("1e-3", "3e-3", "1e-2")]
    assert names[3] == "method.name=ia3,trainer.learning_rate=1e-3"


def test_dir_names_are_readable_and_filesystem_safe() -> None:
    assert grid.dir_name("method.name=dora,trainer.learning_rate=0.001") == \
        "method.name=dora,trainer.learning_rate=0.001"
    a, b = grid.dir_name("method.target_modules=[q_proj]"), grid.dir_name("method.target_modules={q_proj}")
    assert a.startswith("method.target_modules=_q_proj-") and a != b  # unsafe characters: a hash keeps them apart
    assert grid.dir_name("model.path=a/b") != grid.dir_name("model.path=a_b")
    long = grid.dir_name("x=" + "y" * 500)
    assert len(long) <= grid.MAX_NAME and "/" not in long


def test_names_show_values_as_resolved_and_dirs_sit_under_the_parent(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    vs = variants_of(recipe, ["trainer.learning_rate=1e-3,3e-3"], parent=tmp_path / "cmp")
    assert [v.name for v in vs] == ["trainer.learning_rate=0.001", "trainer.learning_rate=0.003"]
    assert vs[0].dir == tmp_path / "cmp" / "trainer.learning_rate=0.001"
    assert vs[0].recipe.output.dir == str(vs[0].dir)
    with pytest.raises(UserError, match="are the same"):
        variants_of(recipe, ["trainer.learning_rate=1e-3,0.001"])


def test_a_method_switch_leaves_out_options_the_new_method_lacks(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, method={"name": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"})
    lora, ia3, loreft = variants_of(recipe, ["method.name=lora,ia3,loreft"])
    assert lora.left_out == [] and lora.replaced == []
    assert sorted(ia3.left_out) == ["method.alpha", "method.r"]
    assert ia3.recipe.method.name == "ia3" and ia3.recipe.method.target_modules == "all-linear"  # shared: kept
    assert ia3.replaced == ['method={"name":"ia3","target_modules":"all-linear"}']
    assert sorted(loreft.left_out) == ["method.alpha", "method.r", "method.target_modules"]


def test_an_incompatible_combination_is_listed_not_fatal(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    vs = variants_of(recipe, ["method.name=lora,ia3", "method.r=4,8"])
    assert [v.recipe is not None for v in vs] == [True, True, False, False]
    assert "unknown key `r`" in vs[2].error and "override `method.r=4`" in vs[2].error
    assert vs[2].left_out == []  # nothing is reported as left out of a variant that does not run


def test_an_override_no_variant_accepts_is_exit_2_with_the_validate_message(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    with pytest.raises(UserError, match=r"(?s)refused in every variant.*Did you mean `learning_rate`\?") as e:
        variants_of(recipe, ["trainer.learnig_rate=1e-3,3e-3"])
    assert f"{recipe}: 1 error in recipe" in str(e.value) and "use_dora" not in str(e.value)
    with pytest.raises(UserError, match=r"(?s)`method.name=rslora` is refused.*method.name=lora,lora\+method.use_rslora"):
        variants_of(recipe, ["method.name=lora,rslora"])
    with pytest.raises(UserError, match="override trainer.seed=x"):
        variants_of(recipe, ["method.r=4,8"], ["trainer.seed=x"])
    with pytest.raises(UserError, match="refused in every variant"):  # ia3 has no r, and no variant but ia3
        variants_of(recipe, ["method.name=ia3", "method.r=4,8"])
    broken = tiny_recipe(tmp_path, "broken.yaml", trainer={"learnig_rate": 1})
    with pytest.raises(UserError, match=r"(?s)no variant is a valid recipe.*broken.yaml:\d+:\d+: trainer.learnig_rate"):
        variants_of(broken, ["method.r=4,8"])


def _finished_run(v: grid.Variant, step: int = 3, checkpoint: bool = False) -> None:
    run_dir.make_dir(v.dir)
    run_dir.write_yaml(v.dir / run_dir.RESOLVED, v.recipe.model_dump(mode="json"))
    run_dir.write_json(v.dir / "summary.json", {"global_step": step})
    if checkpoint:
        (v.dir / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (v.dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text('{"global_step": 3}')


def test_a_rerun_skips_resumes_or_refuses_by_what_the_dir_holds(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    v, = variants_of(recipe, ["method.r=4"], parent=tmp_path / "cmp")
    assert run.action(v, overwrite=False) == "fresh"
    _finished_run(v)
    assert run.action(v, overwrite=False) == "skip"
    longer, = variants_of(recipe, ["method.r=4"], steps=20, parent=tmp_path / "cmp")
    assert run.action(longer, overwrite=False) == "again"  # no checkpoint to go on from
    _finished_run(v, checkpoint=True)
    logs, = variants_of(recipe, ["method.r=4"], ["trainer.logging_steps=2"], parent=tmp_path / "cmp")
    assert run.action(logs, overwrite=False) == "resume"  # nothing that changes what is trained
    assert run.earlier_run(logs, "resume") == ("resumed from the earlier run's `checkpoint-3` (changed since: "
                                               "`trainer.logging_steps`)")
    # Another length is not resumed: the learning-rate schedule was built for the old one.
    with pytest.raises(UserError, match=r"^--steps 20: .* holds a run of trainer.max_steps=8; its steps so far "
                                        r"followed the learning-rate schedule of a 8-step run.* pass --overwrite"):
        run.action(longer, overwrite=False, steps=20)
    assert run.action(longer, overwrite=True, steps=20) == "overwrite"
    assert "(--overwrite): the earlier run's recipe differed in `trainer.max_steps`" in run.earlier_run(longer,
                                                                                                         "overwrite")
    other, = variants_of(recipe, ["method.r=4"], ["trainer.learning_rate=0.1"], parent=tmp_path / "cmp")
    with pytest.raises(UserError, match=r"holds a run of another recipe \(changed: trainer.learning_rate\)"):
        run.action(other, overwrite=False)
    assert run.action(other, overwrite=True) == "overwrite"
    (tmp_path / "cmp" / "method.r=4" / run_dir.MARKER).unlink()
    with pytest.raises(UserError, match="not made by tunekit"):
        run.action(v, overwrite=True)


def test_the_train_command_repeats_the_validated_overrides(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, method={"name": "lora", "r": 8, "alpha": 16})
    _, ia3 = variants_of(recipe, ["method.name=lora,ia3"], steps=3, parent=tmp_path / "a b,c")
    cmd = run.train_command(ia3, recipe, ["trainer.max_steps=3"], "resume", False)
    assert cmd[3:] == ["train", str(recipe), "trainer.max_steps=3", "method.name=ia3", 'method={"name":"ia3"}',
                       f'output.dir="{tmp_path / "a b,c" / "method.name=ia3"}"', "--resume"]
    assert yaml.safe_load(cmd[-2].split("=", 1)[1]) == str(ia3.dir)


def test_a_failure_reason_is_the_error_line_else_the_exception(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("$ tunekit train\nstep 1/3 loss 6.2\nerror: r.yaml: 2 errors in recipe\n  a: bad\n  b: bad\n"
                   "after\n")
    assert run.failure_reason(log, 2) == "error: r.yaml: 2 errors in recipe\n  a: bad\n  b: bad"
    assert run.first_line(run.failure_reason(log, 2)) == "a: bad (and 1 more)"
    log.write_text("Traceback (most recent call last):\n  File x\ntorch.OutOfMemoryError: CUDA out of memory\n")
    assert run.failure_reason(log, 1) == "torch.OutOfMemoryError: CUDA out of memory"
    log.write_text("step 1/3\n")
    assert run.failure_reason(log, -9) == "killed by SIGKILL (out of memory?)"


def test_cli_bad_vary_exits_2_without_traceback(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    proc = run_cli("compare", recipe, "--vary", "trainer.learnig_rate=1e-3,3e-3", "--out", tmp_path / "cmp")
    assert proc.returncode == 2 and "Did you mean `learning_rate`?" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "cmp").exists()
    proc = run_cli("compare", recipe, "--vary", "method.r")
    assert proc.returncode == 2 and "expected KEY=V1,V2" in proc.stderr and "Traceback" not in proc.stderr
