"""What `tunekit merge` refuses, and how it writes its output, on real peft adapters over the builtin tiny model.

Virtual-token adapters (prompt / prefix tuning) have no weights to fold in; inputs with different tokenizers cannot
share one; a bad --out is a UserError; a merge killed while saving leaves no --out behind, and the next merge to the
same --out cleans up after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.unit.test_merging import make_adapter
from tunekit.errors import UserError
from tunekit.merge.adapter import merge_adapter
from tunekit.merge.models import merge_models
from tunekit.merge.run import merge_cli
from tunekit.model.builtin import materialize


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("lora")
    return make_adapter(tmp / "a", 1), make_adapter(tmp / "b", 2)


def virtual_token_adapter(out: Path, kind: str) -> Path:
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cls = {"prefix_tuning": PrefixTuningConfig, "prompt_tuning": PromptTuningConfig}[kind]
    base = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0))
    get_peft_model(base, cls(num_virtual_tokens=4, task_type="CAUSAL_LM")).save_pretrained(out)
    return out


def linear(inputs: list[Path], out: Path) -> dict:
    return merge_models([str(i) for i in inputs], out, "linear", None, 0.5, 1.0, None, None, "float32", 0)


@pytest.mark.parametrize("kind", ["prefix_tuning", "prompt_tuning"])
def test_virtual_token_adapters_are_refused_alone_and_among_others(kind: str, lora: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    adapter = virtual_token_adapter(tmp_path / kind, kind)
    with pytest.raises(UserError, match=f"{adapter}: holds a {kind} adapter.*no weights to fold into the base"):
        merge_adapter(str(adapter), tmp_path / "m1")
    with pytest.raises(UserError, match=f"{adapter}: holds a {kind} adapter.*adapter attached"):
        linear([lora[0], adapter], tmp_path / "m2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [kind]  # nothing left behind


def test_inputs_must_share_vocabulary_and_chat_template(lora: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    a, b = (shutil.copytree(p, tmp_path / p.name) for p in lora)
    tok = AutoTokenizer.from_pretrained(materialize("builtin:tiny-llama", 0))
    tok.save_pretrained(a)
    tok.chat_template = "{{ messages[0]['content'] }}"
    tok.save_pretrained(b)
    with pytest.raises(UserError, match=f"`{a}` and `{b}` have different tokenizers \\(the chat template"):
        linear([a, b], tmp_path / "m1")
    tok = AutoTokenizer.from_pretrained(a)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(b)
    with pytest.raises(UserError, match="different tokenizers \\(the vocabulary"):
        linear([a, b], tmp_path / "m2")
    AutoTokenizer.from_pretrained(a).save_pretrained(b)  # the same tokenizer: fine, and recorded
    info = linear([a, b], tmp_path / "m3")
    assert info["tokenizer"] == str(a)
    assert json.loads((tmp_path / "m3" / "merge.json").read_text())["tokenizer"] == str(a)


def test_flags_a_method_does_not_use_or_out_of_range_are_refused() -> None:
    def cli(inputs: list[str], method: str | None, **flags: object) -> dict:
        args = {"weights": None, "density": 0.5, "scale": 1.0, "base": None, "eval_data": None, "dtype": "float32",
                "tolerance": 1e-4, "seed": 0, "outliers": 0.01, **flags}
        return merge_cli(inputs, Path("never-written"), method, **args)  # type: ignore[arg-type]

    for method in ("linear", "soup", "greedy_soup", "model_stock"):
        with pytest.raises(UserError, match=f"--scale 0.5: --method {method} does not use it"):
            cli(["a", "b"], method, scale=0.5)
    with pytest.raises(UserError, match="--weights 1,2: --method greedy_soup does not use it"):
        cli(["a", "b"], "greedy_soup", weights="1,2")
    with pytest.raises(UserError, match="--base x: an adapter merge"):
        cli(["a"], None, base="x")
    for outliers in (2.0, -0.5, 1.0):
        with pytest.raises(UserError, match=f"--outliers {outliers}: must be in \\[0, 1\\)"):
            cli(["a", "b"], "breadcrumbs", outliers=outliers)
    with pytest.raises(UserError, match="--outliers 0.6 --density 0.6: .*at most 1"):
        cli(["a", "b"], "breadcrumbs", outliers=0.6, density=0.6)
    assert not Path("never-written").exists()


def test_an_out_that_cannot_be_created_is_a_user_error(lora: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=f"--out {tmp_path}/afile/sub: cannot create directory .*a file is in the way"):
        merge_adapter(str(lora[0]), tmp_path / "afile" / "sub")
    with pytest.raises(UserError, match="--out /proc/merged: cannot create directory"):
        linear(list(lora), Path("/proc/merged"))


KILLED_WHILE_SAVING = """
import os, sys
from transformers import PreTrainedTokenizerBase
PreTrainedTokenizerBase.save_pretrained = lambda *a, **k: os.kill(os.getpid(), 9)  # killed after the weights
from tunekit.cli import main
sys.argv = ["tunekit", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("several", [False, True])
def test_a_merge_killed_while_saving_leaves_no_out_and_the_next_one_cleans_up(several: bool, lora: tuple[Path, Path],
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "merged"
    inputs = [str(p) for p in (lora if several else lora[:1])]
    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, "merge", *inputs, "--out", str(out)],
                          env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    (partial,) = tmp_path.glob("merged.partial-*")
    assert (partial / "model.safetensors").is_file() and not (partial / "merge.json").exists()
    assert not out.exists()  # nothing that loads as a finished model
    info = merge_cli(inputs, out, None, None, 0.5, 1.0, None, None, "float32", 1e-4, 0)
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert json.loads((out / "merge.json").read_text()) == info
    assert (out / "tokenizer_config.json").is_file() and (out / "model.safetensors").is_file()


def test_a_model_directory_without_a_tokenizer_is_named(tmp_path: Path) -> None:
    """A model saved without its tokenizer (a merge killed before the tokenizer was written, a bare save_pretrained):
    transformers' ValueError about backend tokenizers became a message naming the directory and what it holds."""
    import shutil

    from tunekit.errors import UserError
    from tunekit.model.builtin import materialize
    from tunekit.model.load import load_tokenizer
    from tunekit.model.schema import ModelConfig

    src = Path(materialize("builtin:tiny-llama", 0))
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(("tokenizer", "special")):
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(UserError, match=rf"`{tmp_path}` has no tokenizer \(it holds: .*config.json.*\); save the "):
        load_tokenizer(ModelConfig(path=str(tmp_path)), str(tmp_path))
