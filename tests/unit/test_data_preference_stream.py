"""Preference, KTO and ReFT data build in bounded memory on `data.num_proc` processes with the output of the
in-memory build that preceded it: rows (every column, as the trainers read them), row order and statistics are
compared with digests recorded from that build (tests/fixtures/data_reference_preference.json), for 1 and 2
processes (sharded even on these small files).

Regenerate only when a change is meant to alter the output:  python -m tests.unit.test_data_preference_stream
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.unit.test_data_reference import FIX, REPO, _digest, build_splits, summary
from tunekit.data import encode

REFERENCE = FIX.parent / "data_reference_preference.json"
PREF, PREF_EVAL, KTO, REFT = ("builtin:arith/pref_train.jsonl", "builtin:arith/pref_eval.jsonl",
                              "builtin:arith/kto_train.jsonl", "builtin:arith/train.jsonl")


def _spec(path: str, fmt: str, **kw: object) -> dict:
    return {"path": path, "format": fmt, **kw}


DEDUP_LENGTH = [{"kind": "dedup", "method": "exact"}, {"kind": "length", "max_tokens": 60},
                {"kind": "random", "fraction": 0.8}]
CASES: dict[str, dict] = {
    "dpo": {"train": [_spec(PREF, "preference")], "eval": [_spec(PREF_EVAL, "preference")]},
    "dpo-holdout": {"train": [_spec(PREF, "preference")], "eval_fraction": 0.1, "shuffle_seed": 3},
    # qwen3 renders both the tool turns and the answers' reasoning (qwen2.5 drops reasoning: dpo-reasoning-dropped)
    "dpo-tools-drop": {"train": [_spec(str(FIX / "pref_tools.jsonl"), "preference")], "drop_invalid_pairs": True,
                       "chat_template": "qwen3"},
    "dpo-tools-error": {"train": [_spec(str(FIX / "pref_tools.jsonl"), "preference")], "chat_template": "qwen3"},
    "dpo-reasoning-dropped": {"train": [_spec(str(FIX / "pref_tools.jsonl"), "preference")],
                              "chat_template": "qwen2.5"},
    "dpo-parquet-two": {"train": [_spec(str(FIX / "pref.parquet"), "preference"), _spec(PREF, "preference")],
                        "eval_fraction": 0.05},
    "dpo-select": {"train": [_spec(PREF, "preference"), _spec(PREF_EVAL, "preference")], "select": DEDUP_LENGTH},
    "kto": {"train": [_spec(KTO, "unpaired_preference")], "eval_fraction": 0.1},
    "kto-tools": {"train": [_spec(str(FIX / "kto_tools.jsonl"), "unpaired_preference")], "chat_template": "qwen3",
                  "eval": [_spec(KTO, "unpaired_preference")]},
    "kto-select": {"train": [_spec(KTO, "unpaired_preference")], "select": DEDUP_LENGTH},
    "reft": {"train": [_spec(REFT, "prompt_answer")]},
    "reft-eval": {"train": [_spec(REFT, "prompt_answer")], "eval": [_spec("builtin:arith/eval.jsonl",
                                                                         "prompt_answer")], "shuffle_seed": 11},
    "reft-holdout-select": {"train": [_spec(REFT, "prompt_answer")], "eval_fraction": 0.2,
                            "select": [{"kind": "dedup", "method": "minhash"}, {"kind": "random", "count": 100}]},
}


def outcome(data: dict, cache_dir: Path, **extra: object) -> dict:
    """The reference summary plus the column types the trainers see (both splits' features)."""
    from tunekit.errors import UserError

    try:
        train, evals, stats = build_splits(data, cache_dir, **extra)
    except UserError as e:
        return {"error": f"{type(e).__name__}: {e}".replace(str(REPO), "<repo>")}
    features = [str(train.features), str(evals.features) if evals is not None else None]
    return {**summary(train.to_list(), evals.to_list() if evals is not None else [], stats),
            "features": _digest(features)}


@pytest.mark.parametrize("num_proc", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_build_matches_the_in_memory_build(case: str, num_proc: int, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "MIN_SHARD", 1)  # shard even these small files
    expected = json.loads(REFERENCE.read_text())[case]
    assert outcome(CASES[case], tmp_path, num_proc=num_proc) == expected


if __name__ == "__main__":
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as d:
        for case, data in sorted(CASES.items()):
            results[case] = outcome(data, Path(d))
            print(case, results[case], file=sys.stderr)
    REFERENCE.write_text(json.dumps(results, indent=1) + "\n")


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_streamed_parquet_source_builds_the_same_rows(num_proc: int, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Parquet file read with load_dataset("parquet", streaming=True) (as a large file would be), three rows
    per batch, instead of loaded whole."""
    from tunekit.data import sources

    monkeypatch.setattr(sources, "STREAM_BYTES", 0)
    monkeypatch.setattr(sources, "STREAM_BATCH", 3)
    monkeypatch.setattr(encode, "MIN_SHARD", 1)
    expected = json.loads(REFERENCE.read_text())["dpo-parquet-two"]
    assert outcome(CASES["dpo-parquet-two"], tmp_path, num_proc=num_proc) == expected


def test_samples_and_weight_mix_preference_datasets(tmp_path: Path) -> None:
    """Before the streaming build `samples`/`weight` were ignored for these formats; now they mix as for SFT data."""
    from tests.unit.test_data_reference import build

    pref_rows = [json.loads(line) for line in (FIX.parent.parent.parent / "tunekit" / "assets" / "data" / "arith" /
                                                "pref_train.jsonl").read_text().splitlines()]
    train, _, stats = build({"train": [_spec(PREF, "preference", samples=600),
                                       _spec(PREF_EVAL, "preference", samples=10)]}, tmp_path)
    assert len(train) == 610 and stats["train_rows"] == 610
    per = stats["train"]["datasets"]
    assert per[PREF] == {"rows_in": 512, "rows_out": 600, "dropped": {}, "repeated": 88}
    assert per[PREF_EVAL]["dropped"] == {"not selected by the dataset mixture (samples/weight)": 54}
    assert per[PREF_EVAL]["rows_out"] == 10
    prompts = {r["prompt"] for r in pref_rows}
    assert sum(r["prompt"][0]["content"] in prompts for r in train) >= 600
