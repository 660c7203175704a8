"""The option reference: docs/reference.md in sync with the schema, `tunekit explain`, `validate --explain`."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import RECIPES, REPO
from tunekit.cli import app
from tunekit.errors import UserError
from tunekit.recipe.load import load_recipe
from tunekit.recipe.reference import commented_yaml, explain, options, render_markdown


def test_reference_doc_is_current() -> None:
    # Regenerate with: python -m tunekit.recipe.reference > docs/reference.md
    assert (REPO / "docs" / "reference.md").read_text(encoding="utf-8") == render_markdown()


def test_every_option_has_a_description() -> None:
    missing = [o.key for o in options() if not o.description and o.variant.split(": ")[-1] in
               ("", "sft", "dpo", "kto", "orpo", "cpo", "reft", "full", "freeze", "lora", "qlora", "lisa", "hft",
                "galore", "loreft", "lofit")]
    assert not missing, missing


def test_explain_key_lists_type_default_and_allowed_values() -> None:
    text = explain("trainer.lr_scheduler")
    assert "Learning-rate schedule" in text and "cosine_with_restarts" in text and 'default: "cosine"' in text
    assert "max_steps" in explain("trainer") and "num_epochs" in explain("trainer")


def test_explain_union_keys_name_their_variants() -> None:
    text = explain("method.r")
    assert "(only with name lora, dora, pissa, olora, eva, corda, lora_ga, qlora)" in text and "Rank of the low-rank update" in text
    assert "also an option of the peft tuners" in text and "vera" in text
    beta = explain("trainer.beta")
    assert "kind dpo" in beta and "kind orpo" in beta and "kind sft" not in beta
    kinds = explain("trainer.kind")
    assert all(f"    {k} " in kinds for k in ("sft", "dpo", "kto", "orpo", "cpo", "reft"))


def test_explain_unknown_key_suggests() -> None:
    with pytest.raises(UserError, match="Did you mean `trainer.lr_scheduler`"):
        explain("trainer.lr_schedular")
    with pytest.raises(UserError, match="`trainer.learning_rate`"):
        explain("learning_rate")  # a bare key: the full paths that end with it


def test_explain_command_exit_codes() -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["explain", "output.save_steps"])
    assert ok.exit_code == 0 and "checkpoint" in ok.output
    bad = runner.invoke(app, ["explain", "output.save_step"])
    assert bad.exit_code != 0 and isinstance(bad.exception, UserError)


def test_validate_explain_is_yaml_with_descriptions() -> None:
    recipe = load_recipe(RECIPES / "dpo.yaml", ["trainer.learning_rate=1e-5"])  # JSON writes 1e-05: a YAML string
    text = commented_yaml(recipe)
    assert yaml.safe_load(text) == recipe.model_dump(mode="json")
    assert "beta: 0.1  # Strength of the pull towards the reference model" in text
    assert "r: 8  # Rank of the low-rank update." in text
