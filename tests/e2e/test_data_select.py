"""data.select through the real CLI: `tunekit train` records every step in data.json and prints it; `tunekit
preprocess` shows the same steps (from the cache entry the run wrote)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli, tiny_recipe

STEPS = [
    {"kind": "length", "min_tokens": 8, "max_tokens": 60},
    {"kind": "dedup", "method": "exact"},
    {"kind": "dedup", "method": "minhash", "threshold": 0.8, "num_perm": 64, "ngram": 3},
    {"kind": "score", "by": "perplexity", "keep": {"fraction": 0.5}, "order": "low"},
    {"kind": "random", "fraction": 0.5},
]


def test_train_and_preprocess_record_each_selection_step(tmp_path: Path) -> None:
    data = {"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages", "samples": 200}],
            "select": STEPS, "cache_dir": str(tmp_path / "cache")}
    recipe = tiny_recipe(tmp_path, data=data, trainer={"max_steps": 2})
    proc = run_cli("train", recipe, check=True)
    stats = json.loads((tmp_path / "run" / "data.json").read_text())["stats"]
    train, records = stats["train"], stats["train"]["select"]
    assert [(r["step"], r["kind"]) for r in records] == list(enumerate(["length", "dedup", "dedup", "score", "random"]))
    assert records[0]["rows_in"] == 200 and records[-1]["rows_out"] == stats["train_rows"]
    for before, after in zip(records, records[1:]):
        assert after["rows_in"] == before["rows_out"]
    for r in records:
        assert r["rows_in"] == r["rows_out"] + r["removed"]
        detail = {"dedup": f"dedup {r['options'].get('method')}", "score": "score perplexity"}.get(r["kind"], r["kind"])
        assert train["dropped"].get(f"select[{r['step']}] {detail}", 0) == r["removed"]  # counted per reason
    assert records[1]["removed"] > 0  # quickstart has repeated rows
    scores = records[3]["scores"]
    assert records[3]["model"] == "builtin:tiny-llama" and scores["min"] <= scores["cut"] <= scores["max"]
    assert records[3]["rows_out"] == (records[3]["rows_in"] + 1) // 2
    assert train["rows_in"] + train["repeated"] - sum(train["dropped"].values()) == train["rows_out"]
    for r in records:  # the data stage prints one line per step
        assert f"data: select[{r['step']}] {r['kind']}" in proc.stderr
    assert f"-> {records[3]['rows_out']} rows ({records[3]['removed']} removed); scores min" in proc.stderr

    shown = run_cli("preprocess", recipe, check=True)
    assert "data selection (train, steps in order)" in shown.stdout and "reused" in shown.stdout
    assert "perplexity (builtin:tiny-llama) keep fraction=0.5, low" in shown.stdout
