"""The method catalogue: peft snapshot up to date, every peft tuner listed, options validated at recipe time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RECIPES, run_cli, tiny_recipe
from tunekit.errors import UserError
from tunekit.methods import peft_schema
from tunekit.recipe.load import load_recipe


def test_snapshot_matches_installed_peft() -> None:
    """peft_options.json is what scripts/snapshot_peft_options.py writes for the installed peft."""
    sys.path.insert(0, str(RECIPES.parent / "scripts"))
    try:
        import snapshot_peft_options
    finally:
        sys.path.pop(0)
    assert snapshot_peft_options.snapshot() == peft_schema.snapshot(), (
        "peft changed: run `python scripts/snapshot_peft_options.py` and review the new tuners/options")


def test_methods_lists_every_peft_tuner() -> None:
    from peft import PeftType

    proc = run_cli("methods")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {t.value.lower() for t in PeftType} <= listed
    assert {"full", "freeze", "lora", "qlora", "lisa", "hft", "galore", "loreft", "lofit"} <= listed
    for name in peft_schema.EXCLUDED:
        assert any(line.startswith(name + " ") and "EXCLUDED:" in line for line in proc.stdout.splitlines())


def test_methods_show_prints_options_and_exclusions() -> None:
    shown = run_cli("methods", "show", "lora").stdout
    for option in ("r:", "alpha:", "use_dora:", "use_rslora:", "init_lora_weights:", "layers_to_transform:",
                   "loraplus_lr_ratio:", "loftq_config:", "lora_ga_config:", "kasa_config:"):
        assert option in shown, option
    assert "use_dora: Optional[bool] = false" in shown
    assert "EXCLUDED" not in shown
    assert "task_ids" in run_cli("methods", "show", "poly").stdout
    missing = run_cli("methods", "show", "loar")
    assert missing.returncode == 2 and "Did you mean `lora`?" in missing.stderr


def test_methods_listing_does_not_import_torch() -> None:
    code = ("import sys; from tunekit.cli import app\n"
            "app(['methods'], standalone_mode=False)\napp(['methods', 'show', 'ia3'], standalone_mode=False)\n"
            "print('HEAVY', [m for m in ('torch', 'transformers', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def _err(*overrides: str) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(RECIPES / "quickstart.yaml", overrides)
    return str(info.value)


def test_peft_tuner_options_are_validated_at_recipe_time() -> None:
    r = load_recipe(RECIPES / "quickstart.yaml", ("method.name=loha", "method.r=4", "method.rank_dropout=0.1"))
    assert r.method.r == 4 and {"name", "r", "rank_dropout"} <= r.method.model_fields_set
    msg = _err("method.name=loha", "method.rankdropout=0.1")
    assert "method.rankdropout: unknown key" in msg and "Did you mean `rank_dropout`?" in msg
    msg = _err("method.name=ia3", "method.rr=4")
    assert "valid keys here:" in msg and "feedforward_modules" in msg
    assert "valid integer" in _err("method.name=vera", "method.r=many")
    assert "task_ids" in _err("method.name=poly")
    assert "Did you mean `prefix_tuning`?" in _err("method.name=prefix_tunning")


@pytest.mark.parametrize("tuner", ["prompt_tuning", "prefix_tuning", "p_tuning", "cartridge"])
def test_virtual_token_tuners_need_num_virtual_tokens(tuner: str, tmp_path: Path) -> None:
    """peft has no default for it: without it, prompt tuning failed inside peft with "unsupported operand type(s)
    for *: 'NoneType' and 'int'" (prefix tuning: "empty(): argument 'size' ..."). Now a recipe error at its line."""
    recipe = tiny_recipe(tmp_path, method={"name": tuner})
    with pytest.raises(UserError) as info:
        load_recipe(recipe)
    assert f"{recipe}:10:3: method.num_virtual_tokens: required key is missing" in str(info.value)  # `method:` line
    with pytest.raises(UserError, match="greater than 0"):
        load_recipe(recipe, ("method.num_virtual_tokens=0",))
    assert load_recipe(recipe, ("method.num_virtual_tokens=8",)).method.num_virtual_tokens == 8
    assert "num_virtual_tokens: int (required)" in run_cli("methods", "show", tuner, check=True).stdout


def test_lora_options_cover_peft_and_reject_typos() -> None:
    r = load_recipe(RECIPES / "quickstart.yaml", (
        "method.use_dora=true", "method.use_rslora=true", "method.init_lora_weights=pissa_niter_4",
        "method.layers_to_transform=[1]", "method.loraplus_lr_ratio=16", "method.target_modules=.*q_proj"))
    assert r.method.use_dora and r.method.init_lora_weights == "pissa_niter_4"
    assert "unknown LoRA init" in _err("method.init_lora_weights=pisa")
    assert "Did you mean `use_dora`?" in _err("method.use_dorra=true")
    q = load_recipe(RECIPES / "quickstart.yaml", ("method.name=qlora", "method.bits=8"))
    assert q.method.bits == 8
    assert "method.bits" in _err("method.name=qlora", "method.bits=3")
    msg = _err("method.name=qlora", "method.init_lora_weights=lora_ga")
    assert "method.init_lora_weights" in msg and "lora_ga estimates full-precision gradients" in msg
    assert load_recipe(RECIPES / "quickstart.yaml", ("method.init_lora_weights=lora_ga",)).method.init_lora_weights \
        == "lora_ga"
    assert "quant_storage applies to 4-bit weights only" in _err("method.name=qlora", "method.bits=8",
                                                                  "method.quant_storage=bfloat16")


def test_lora_variants_by_name_are_lora_with_their_setting() -> None:
    """`name: dora` is LoRA with use_dora: true (pissa ...: init_lora_weights); the setting reaches peft like one the
    recipe wrote (peft_kwargs reads the fields set) and survives the resolved recipe; another value is refused."""
    d = load_recipe(RECIPES / "quickstart.yaml", ("method.name=dora",))
    assert d.method.use_dora is True and "use_dora" in d.method.model_fields_set and d.method.r == 16
    again = type(d).model_validate(d.model_dump(mode="json"))
    assert again.method.name == "dora" and again.method.use_dora is True
    p = load_recipe(RECIPES / "quickstart.yaml", ("method.name=pissa", "method.init_lora_weights=pissa_niter_4"))
    assert p.method.init_lora_weights == "pissa_niter_4"
    assert "`dora` is LoRA with use_dora: true" in _err("method.name=dora", "method.use_dora=false")
    assert "`olora` is LoRA with init_lora_weights: olora" in _err("method.name=olora", "method.init_lora_weights=eva")
