"""`tunekit init`: starter recipes from flags, validated before they are written, for every data format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli


@pytest.mark.parametrize("data,fmt,kind", [
    ("builtin:quickstart/train.jsonl", "messages", "sft"),
    ("builtin:arith/pref_train.jsonl", "preference", "dpo"),
    ("builtin:arith/kto_train.jsonl", "unpaired_preference", "kto"),
    ("builtin:arith/train.jsonl", "prompt_answer", "reft"),
])
def test_init_detects_the_format_and_writes_a_valid_commented_recipe(tmp_path: Path, data: str, fmt: str,
                                                                      kind: str) -> None:
    out = tmp_path / "my.yaml"
    proc = run_cli("init", out, "--model", "builtin:tiny-llama", "--data", data)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}: {kind} with method lora" in " ".join(proc.stderr.split())
    text = out.read_text()
    recipe = yaml.safe_load(text)
    assert recipe["data"]["train"] == [{"path": data, "format": fmt}] and recipe["trainer"]["kind"] == kind
    assert "  r: 16  # Rank of the low-rank update." in text  # every key written has its description
    assert run_cli("validate", out).returncode == 0


def test_init_recipe_trains(tmp_path: Path) -> None:
    out = tmp_path / "my.yaml"
    run_cli("init", out, "--model", "builtin:tiny-llama", "--data", "builtin:quickstart/train.jsonl", "--method",
            "full", check=True)
    assert yaml.safe_load(out.read_text())["trainer"]["learning_rate"] == 1e-5  # full fine-tuning: a lower rate
    run_cli("train", out, "trainer.max_steps=2", "trainer.eval_steps=2", f"output.dir={tmp_path / 'run'}", check=True)
    assert (tmp_path / "run" / "final").is_dir()


def test_init_errors_name_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "my.yaml"
    args = ["init", out, "--model", "builtin:tiny-llama", "--data", "builtin:quickstart/train.jsonl"]
    cases = [
        (["--method", "lroa"], "--method: `lroa` is not one of full,", "Did you mean `lora`?"),
        (["--trainer", "dop"], "--trainer: `dop` is not one of sft, dpo", "Did you mean `dpo`?"),
        (["--trainer", "dpo"], "trainer.kind `dpo` reads data in format preference, but data uses messages", ""),
        (["--format", "chat"], "--format: `chat` is not a data format", ""),
    ]
    for extra, message, hint in cases:
        proc = run_cli(*args, *extra)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert message in proc.stderr and hint in proc.stderr
        assert not out.exists()
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"foo": 1, "bar": 2}) + "\n")
    proc = run_cli("init", out, "--model", "builtin:tiny-llama", "--data", odd)
    assert proc.returncode == 2 and "cannot tell the format from the first row's keys (bar, foo); give --format" \
        in proc.stderr
    missing = run_cli("init", out, "--model", "builtin:tiny-llama", "--data", tmp_path / "nope.jsonl")
    assert missing.returncode == 2 and "file not found" in missing.stderr
    run_cli(*args, check=True)
    again = run_cli(*args)
    assert again.returncode == 2 and "exists; choose another file name or pass --force" in again.stderr
    assert run_cli(*args, "--force").returncode == 0


def test_init_reads_the_first_rows_in_the_format_before_writing(tmp_path: Path) -> None:
    """A --format the rows do not have (alpaca on messages rows), or a later row that breaks the detected format,
    is refused with the format's own error and nothing is written: the recipe would be 'validated' but unusable."""
    out = tmp_path / "my.yaml"
    good = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}
    data = tmp_path / "msgs.jsonl"
    data.write_text(json.dumps(good) + "\n" + json.dumps({"messages": "oops"}) + "\n")
    alpaca = run_cli("init", out, "--model", "builtin:tiny-llama", "--data", data, "--format", "alpaca")
    assert alpaca.returncode == 2 and "Traceback" not in alpaca.stderr, alpaca.stderr
    assert "--format: the data does not read as format `alpaca`" in alpaca.stderr
    assert "row 1 (line 1): missing column `instruction`" in alpaca.stderr
    detected = run_cli("init", out, "--model", "builtin:tiny-llama", "--data", data)
    assert detected.returncode == 2 and "(format read as `messages`)" in detected.stderr
    assert "row 2 (line 2): `messages` must be a non-empty list" in detected.stderr
    assert not out.exists()
