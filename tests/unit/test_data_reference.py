"""The data stage's output is pinned: token ids, labels, row order and statistics (drop/truncation counts
included) of every SFT format on the shipped and test datasets, packing on and off, against digests recorded
from the in-memory build that preceded the streaming one (tests/fixtures/data_reference.json).

Regenerate only when a change is meant to alter the output:  python -m tests.unit.test_data_reference
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "data"
REPO = FIX.parent.parent.parent
REFERENCE = FIX.parent / "data_reference.json"
QS, QS_EVAL = "builtin:quickstart/train.jsonl", "builtin:quickstart/eval.jsonl"


def _spec(path: str, fmt: str, **kw: Any) -> dict:
    return {"path": path, "format": fmt, **kw}


CASES: dict[str, dict] = {
    "quickstart": {"train": [_spec(QS, "messages")], "eval": [_spec(QS_EVAL, "messages")], "max_length": 256},
    "quickstart-holdout-truncate": {"train": [_spec(QS, "messages")], "eval_fraction": 0.1, "max_length": 24,
                                    "drop_untrained": True},
    "quickstart-drop": {"train": [_spec(QS, "messages")], "max_length": 40, "length_policy": "drop",
                        "shuffle_seed": 7},
    "quickstart-untrained": {"train": [_spec(QS, "messages", system="You are a careful calculator.")],
                             "max_length": 30, "drop_untrained": True},
    "mixture-weights": {"train": [_spec(str(FIX / "messages.arrow"), "messages", weight=3),
                                  _spec(str(FIX / "alpaca.jsonl"), "alpaca", weight=1)]},
    "mixture-samples": {"train": [_spec(str(FIX / "alpaca.jsonl"), "alpaca", samples=7, system="Be kind."),
                                  _spec(QS, "messages", samples=50)]},
    "sharegpt": {"train": [_spec(str(FIX / "sharegpt.json"), "sharegpt", roles={"bot": "assistant"})]},
    "tools-last": {"train": [_spec(str(FIX / "tools.jsonl"), "messages")], "train_on": "last_assistant"},
    "tools-all": {"train": [_spec(str(FIX / "tools.jsonl"), "messages")], "train_on": "all"},
    "csv": {"train": [_spec(str(FIX / "qa.csv"), "prompt_completion",
                            columns={"prompt": "question", "completion": "answer"})]},
    "text": {"train": [_spec(str(FIX / "text.parquet"), "text")], "max_length": 16},
    "saved-glob": {"train": [_spec(str(FIX / "saved"), "messages"),
                             _spec(str(FIX / "parts" / "part-*.jsonl"), "messages")]},
    "qwen25-tools": {"train": [_spec(str(FIX / "tool_calls.jsonl"), "messages"),
                               _spec(str(FIX / "sharegpt_tools.json"), "sharegpt")], "chat_template": "qwen2.5",
                     "max_length": 1024},
    "qwen3-per-turn": {"train": [_spec(str(FIX / "tools.jsonl"), "messages"), _spec(QS, "messages", samples=40)],
                       "chat_template": "qwen3", "max_length": 512},
    "gemma2-merge": {"train": [_spec(str(FIX / "alpaca.jsonl"), "alpaca", system="Be kind.")],
                     "chat_template": "gemma2", "system_role": "merge_into_first_user"},
}
PREFERENCE = {
    "dpo": {"train": [_spec("builtin:arith/pref_train.jsonl", "preference")],
            "eval": [_spec("builtin:arith/pref_eval.jsonl", "preference")]},
    "kto": {"train": [_spec("builtin:arith/kto_train.jsonl", "unpaired_preference")], "eval_fraction": 0.1},
    "reft": {"train": [_spec("builtin:arith/train.jsonl", "prompt_answer")]},
}
ERRORS = {  # the first bad row in file order is the one named, with its file and line
    "untrained-after-truncation": {"train": [_spec(QS, "messages")], "max_length": 24},
    "bad-column": {"train": [_spec(QS, "messages"), _spec(str(FIX / "alpaca.jsonl"), "prompt_completion")]},
}
VOLATILE = ("cache", "cache_dir", "fingerprint")  # where the entry lives and whether it was reused


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=False).encode()).hexdigest()


def build_splits(data: dict, cache_dir: Path, **extra: Any) -> tuple[Any, Any, dict]:
    """(train Dataset, eval Dataset or None, statistics without the volatile keys)."""
    from transformers import AutoTokenizer

    from tunekit.data.build import build_datasets
    from tunekit.data.schema import DataConfig
    from tunekit.model.builtin import TOKENIZER_DIR

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    train, evals, stats = build_datasets(DataConfig(**data, **extra, cache_dir=str(cache_dir)), tok, seed=0)
    stats = {k: v for k, v in stats.items() if k not in VOLATILE}
    stats = json.loads(json.dumps(stats).replace(str(REPO), "<repo>"))  # data files are named by path: any checkout
    return train, evals, stats


def build(data: dict, cache_dir: Path, **extra: Any) -> tuple[list, list, dict]:
    train, evals, stats = build_splits(data, cache_dir, **extra)
    return train.to_list(), (evals.to_list() if evals is not None else []), stats


def summary(train: list, evals: list, stats: dict) -> dict:
    return {"train_rows": len(train), "eval_rows": len(evals), "train": _digest(train), "eval": _digest(evals),
            "stats": _digest(stats), "tokens": stats["train"].get("tokens")}


def outcome(data: dict, cache_dir: Path, **extra: Any) -> dict:
    from tunekit.errors import UserError

    try:
        return summary(*build(data, cache_dir, **extra))
    except UserError as e:
        return {"error": f"{type(e).__name__}: {e}".replace(str(REPO), "<repo>")}


def _all_cases() -> dict[str, dict]:
    out = {}
    for name, data in CASES.items():
        out[f"{name}/unpacked"] = data
        out[f"{name}/packed"] = {**data, "packing": True}
    out.update({f"{name}/error": data for name, data in ERRORS.items()})
    return {**out, **{f"{name}/preference": data for name, data in PREFERENCE.items()}}


@pytest.mark.parametrize("case", sorted(_all_cases()))
def test_build_matches_the_recorded_reference(case: str, tmp_path: Path) -> None:
    expected = json.loads(REFERENCE.read_text())[case]
    got = outcome(_all_cases()[case], tmp_path)
    assert got == expected


if __name__ == "__main__":
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as d:
        for case, data in sorted(_all_cases().items()):
            results[case] = outcome(data, Path(d))
            print(case, results[case], file=sys.stderr)
    REFERENCE.write_text(json.dumps(results, indent=1) + "\n")
