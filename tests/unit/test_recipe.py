"""Recipe schema and loader: shipped recipes validate; errors name file:line, key path and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RECIPES
from tunekit.errors import UserError
from tunekit.recipe.load import load_recipe

SHIPPED = sorted(RECIPES.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_validates(path: Path) -> None:
    load_recipe(path)


def _error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_typo_reports_file_line_and_did_you_mean(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "quickstart.yaml").read_text().replace("learning_rate:", "learnig_rate:"))
    msg = _error(bad)
    line = _line_of(bad, "learnig_rate")
    assert f"{bad}:{line}:3: trainer.learnig_rate: unknown key" in msg
    assert "Did you mean `learning_rate`?" in msg


def test_wrong_type_reports_expected_and_found(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "quickstart.yaml").read_text().replace("learning_rate: 3.0e-3", "learning_rate: fast"))
    msg = _error(bad)
    assert f"{bad}:{_line_of(bad, 'learning_rate')}:" in msg
    assert "trainer.learning_rate" in msg and "valid number" in msg and "'fast'" in msg


def test_a_misspelt_choice_gets_a_did_you_mean(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "quickstart.yaml").read_text().replace("lr_scheduler: cosine", "lr_scheduler: cosin"))
    msg = _error(bad)
    assert "trainer.lr_scheduler: input should be 'linear', 'cosine'" in msg and "Did you mean `cosine`?" in msg, msg
    msg = _error(RECIPES / "quickstart.yaml", ("trainer.lr_scheduler=warmup_stable_decai",))
    assert "Did you mean `warmup_stable_decay`?" in msg, msg


def test_a_value_that_fits_no_member_of_a_union_is_one_error(tmp_path: Path) -> None:
    """`chat_template_kwargs` values are bool | int | float | str: a null was four errors, one per member."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "quickstart.yaml").read_text().replace("data:\n", "data:\n  chat_template_kwargs:\n"
                                                                    "    z: ~\n", 1))
    msg = _error(bad)
    assert msg.startswith(f"{bad}: 1 error in recipe"), msg
    assert (f"{bad}:{_line_of(bad, 'z: ~')}:8: data.chat_template_kwargs.z: input should be a valid boolean, a valid "
            "integer, a valid number or a valid string, found None") in msg, msg


def test_override_errors_name_the_override() -> None:
    msg = _error(RECIPES / "quickstart.yaml", ("trainer.learning_rate=fast",))
    assert "override `trainer.learning_rate=fast`" in msg and "valid number" in msg
    msg = _error(RECIPES / "quickstart.yaml", ("trainer.learnig_rate=1e-4",))
    assert "override `trainer.learnig_rate=1e-4`" in msg and "Did you mean `learning_rate`?" in msg
    msg = _error(RECIPES / "quickstart.yaml", ("trainer",))
    assert "KEY=VALUE" in msg
    # an override that makes an unknown section or indexes a list is named (not a line of the recipe)
    msg = _error(RECIPES / "quickstart.yaml", ("foo.bar=1",))
    assert msg.splitlines()[-1].strip().startswith("override `foo.bar=1`: foo: unknown key `foo`"), msg
    msg = _error(RECIPES / "quickstart.yaml", ("output.dir=",))  # it wrote the run into the working directory
    assert "override `output.dir=`: output.dir: string should have at least 1 character" in msg, msg
    for text in ("data.train[0].path=x", "data.train.0.path=x"):
        msg = _error(RECIPES / "quickstart.yaml", (text,))
        assert f"override `{text}`" in msg and "give the whole list (`data.train=[...]`)" in msg, msg


def test_a_repeated_merge_key_is_a_duplicate_key(tmp_path: Path) -> None:
    """YAML merges several mappings with one `<<: [*a, *b]`; PyYAML let a second `<<` silently win."""
    bad = tmp_path / "bad.yaml"
    text = (RECIPES / "quickstart.yaml").read_text()
    bad.write_text(text.replace("trainer:\n", "trainer:\n  <<: {seed: 1}\n  <<: {seed: 2}\n", 1))
    msg = _error(bad)
    line = _line_of(bad, "<<: {seed: 2}")
    assert f"{bad}:{line}:3: duplicate key `<<` (first at line {line - 1}); merge several in one" in msg, msg


@pytest.mark.parametrize(("typed", "read_as"), [("010", "the octal number 8"), ("-0100", "the octal number -64"),
                                                ("1:30", "the base-60 number 90")])
def test_a_yaml_1_1_number_that_reads_as_another_is_refused(tmp_path: Path, typed: str, read_as: str) -> None:
    """PyYAML reads `max_steps: 010` as 8 and `1:30` as 90: refused at its line (file) or named (override)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "quickstart.yaml").read_text().replace("seed: 0", f"seed: {typed}"))
    msg = _error(bad)
    assert f"{bad}:{_line_of(bad, 'seed:')}:9: `{typed}`: " in msg and read_as in msg, msg
    msg = _error(RECIPES / "quickstart.yaml", (f"trainer.seed={typed}",))
    assert f"override `trainer.seed={typed}`: `{typed}`: " in msg and read_as in msg, msg
    # 07 reads the same either way; quoted, 010 is the text "010" (which pydantic reads as 10)
    assert load_recipe(RECIPES / "quickstart.yaml", ("trainer.seed=07",)).trainer.seed == 7
    assert load_recipe(RECIPES / "quickstart.yaml", ('trainer.seed="010"',)).trainer.seed == 10


def test_overrides_apply_and_validate() -> None:
    r = load_recipe(RECIPES / "quickstart.yaml", ("trainer.learning_rate=1e-4", "method.r=4", "output.dir=x"))
    assert r.trainer.learning_rate == 1e-4 and r.method.r == 4 and r.output.dir == "x"


def test_unknown_method_suggests_closest(tmp_path: Path) -> None:
    msg = _error(RECIPES / "quickstart.yaml", ("method.name=lorra",))
    assert "method.name" in msg and "Did you mean `lora`?" in msg


def test_missing_section_and_malformed_yaml(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("model:\n  path: builtin:tiny-llama\n")
    msg = _error(p)
    assert "data: required key is missing" in msg and "trainer" in msg and "output" in msg
    p.write_text("model:\n  path: [unclosed\n")
    msg = _error(p)
    assert f"{p}:3:" in msg and "malformed YAML" in msg


def test_a_tab_indent_says_to_indent_with_spaces(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("model:\n\tpath: x\n")
    assert _error(p).startswith(f"{p}:2:1: malformed YAML: found character") and "indent with spaces" in _error(p)


def test_an_empty_recipe_says_so_once(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("# nothing yet\n")
    msg = _error(p)
    assert msg.startswith(f"{p}: the recipe is empty") and "tunekit init" in msg and "required key" not in msg


def test_missing_recipe_is_named(tmp_path: Path) -> None:
    assert "recipe not found" in _error(tmp_path / "nope.yaml")


def test_cross_field_rule(tmp_path: Path) -> None:
    msg = _error(RECIPES / "quickstart.yaml", ("trainer.warmup_steps=5",))
    assert "warmup_ratio or warmup_steps" in msg


def test_a_whole_recipe_rule_points_at_the_key_it_names(tmp_path: Path) -> None:
    """Rules that read several sections (data.packing with a dpo trainer) have no location from pydantic; the error
    points at the line of the key the rule names, or at the override that set it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "dpo.yaml").read_text().replace("data:\n", "data:\n  packing: true\n", 1))
    msg = _error(bad)
    assert f"{bad}:{_line_of(bad, 'packing: true')}:" in msg and "data.packing: only trainer.kind sft packs" in msg
    assert "data.packing: data.packing" not in msg  # the key is named once
    msg = _error(RECIPES / "dpo.yaml", ("data.padding_free=true",))
    assert "override `data.padding_free=true`: data.padding_free: only trainer.kind sft packs" in msg


@pytest.mark.parametrize(("kind", "option", "refused"), [
    ("dpo", "data.train_reasoning=false", True), ("kto", "data.train_on=all", True),
    ("dpo", "data.length_policy=drop", True), ("reft", "data.multi_turn=per_turn", True),
    ("reft", "data.train_on=all", False)])  # ReFT's warm-up is SFT on the solution: train_on applies there
def test_sft_example_options_are_refused_where_they_would_do_nothing(kind: str, option: str, refused: bool) -> None:
    recipe = RECIPES / f"{kind}.yaml"
    if not refused:
        load_recipe(recipe, (option,))
        return
    name = option.split("=")[0]
    assert f"override `{option}`: {name}: shapes SFT examples" in _error(recipe, (option,))
    assert "would be ignored. Remove it" in _error(recipe, (option,))


def test_every_field_has_a_description() -> None:
    from pydantic import BaseModel

    from tunekit.recipe.errors import _strip_annotated
    from tunekit.recipe.schema import Recipe

    seen: set[type] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            import typing

            stack = [field.annotation]
            while stack:
                tp = _strip_annotated(stack.pop())
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    walk(tp)
                stack.extend(typing.get_args(tp))

    walk(Recipe)
    assert len(seen) >= 6
