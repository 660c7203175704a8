"""The console of `tunekit train` redirected to files (not a terminal): tunekit's own lines only, plain text."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import read_metrics, run_cli, tiny_recipe

LIBRARY_NOISE = re.compile(r"Warning|warnings\.warn|\[WARNING\]|Failed to load|it/s\]|s/it\]|%\||Loading weights|"
                           r"Generating .* split|Tokenizing|Dropping fully truncated|Writing model shards")
DICT_REPR = re.compile(r"\{'\w+': ")


def test_train_console_is_plain_and_quiet(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, data={"eval": [{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}]},
                         trainer={"max_steps": 6, "logging_steps": 2, "eval_steps": 3},
                         output={"dir": str(tmp_path / "run"), "save_steps": 3})
    proc = run_cli("train", recipe, check=True)
    console = proc.stdout + proc.stderr
    assert "\r" not in console and "\x1b" not in console, console
    for line in console.splitlines():
        assert not LIBRARY_NOISE.search(line), line
        assert not DICT_REPR.search(line), line
    steps = [ln for ln in proc.stderr.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in steps if "eval_loss" not in ln] == ["1/6", "2/6", "4/6", "6/6"]
    assert all(re.search(r"loss +\d+\.\d{4}  lr .*tok/s .*mem .* GB", ln) for ln in steps if "eval_loss" not in ln)
    assert sum("eval_loss" in ln for ln in steps) == 2
    assert re.search(r"final loss \d+\.\d{4},", proc.stderr), proc.stderr
    # metrics.jsonl: one throughput number, elapsed time and peak memory on every training row
    train_rows = [m for m in read_metrics(tmp_path / "run") if "loss" in m]
    for row in train_rows:
        assert {"step", "epoch", "learning_rate", "grad_norm", "tokens_seen", "tokens_per_s", "elapsed_s",
                "peak_mem_gb"} <= set(row)
        assert not {"train_tokens_per_second", "num_input_tokens_seen", "train_runtime", "num_tokens"} & set(row)
