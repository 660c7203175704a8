"""Data first cut: formats, loss masks from the rendered conversation, length policy, row-named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.data.build import build_datasets
from tunekit.data.masking import tokenize_with_mask
from tunekit.data.schema import DataConfig
from tunekit.errors import UserError
from tunekit.model.builtin import TOKENIZER_DIR


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _trained_text(tok, enc: dict) -> str:
    return tok.decode([t for t, m in zip(enc["input_ids"], enc["mask"]) if m])


def test_multi_turn_mask_trains_exactly_the_assistant_turns(tok) -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "2 plus 2 is 4."},
        {"role": "user", "content": "And 3 times 3?"},
        {"role": "assistant", "content": "3 times 3 is 9."},
    ]
    enc = tokenize_with_mask(tok, msgs, "assistant", "test")
    # Hand-computed expectation for the ChatML template: each answer, its <|im_end|> and the newline after.
    assert _trained_text(tok, enc) == "2 plus 2 is 4.<|im_end|>\n3 times 3 is 9.<|im_end|>\n"
    # Token by token: the trained tokens are exactly the tokens of the two answer blocks, in place.
    ids = enc["input_ids"]
    answer1 = tok("2 plus 2 is 4.<|im_end|>\n", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i : i + len(answer1)] == answer1)
    assert enc["mask"][start : start + len(answer1)] == [1] * len(answer1)
    assert enc["mask"][:start] == [0] * start
    assert tok.eos_token_id in [t for t, m in zip(ids, enc["mask"]) if m]


def test_train_on_all(tok) -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    enc = tokenize_with_mask(tok, msgs, "all", "test")
    assert all(enc["mask"])


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_prompt_completion_with_column_mapping(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "pc.jsonl", [{"q": "What is 1 plus 1?", "a": "2"}] * 3)
    cfg = DataConfig(train=[{"path": str(f), "format": "prompt_completion", "columns": {"prompt": "q", "completion": "a"}}])
    train, ev, stats = build_datasets(cfg, tok, seed=0)
    assert len(train) == 3 and ev is None
    row = train[0]
    trained = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])
    assert trained == "2<|im_end|>\n"


def test_malformed_json_names_file_and_line(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, "{not json"])
    cfg = DataConfig(train=[{"path": str(f), "format": "prompt_completion"}])
    with pytest.raises(UserError, match=rf"{f}:2: malformed JSON"):
        build_datasets(cfg, tok, seed=0)


def test_missing_column_names_row_expected_and_found(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a", "answer": "b"}])
    cfg = DataConfig(train=[{"path": str(f), "format": "prompt_completion"}])
    with pytest.raises(UserError, match=r"row 2: missing column `completion`.*found: answer, prompt"):
        build_datasets(cfg, tok, seed=0)


def test_missing_data_file_is_named(tok, tmp_path: Path) -> None:
    cfg = DataConfig(train=[{"path": str(tmp_path / "nope.jsonl"), "format": "messages"}])
    with pytest.raises(UserError, match="file not found: .*nope.jsonl"):
        build_datasets(cfg, tok, seed=0)


def test_length_policy_counts_truncated_and_dropped(tok, tmp_path: Path) -> None:
    long = {"prompt": "short", "completion": "word " * 200}
    short = {"prompt": "short", "completion": "ok"}
    f = _write(tmp_path / "d.jsonl", [long, short, short])
    cfg = DataConfig(train=[{"path": str(f), "format": "prompt_completion"}], max_length=32)
    train, _, stats = build_datasets(cfg, tok, seed=0)
    assert stats["train"]["truncated"] == 1 and len(train) == 3 and max(len(r["input_ids"]) for r in train) == 32
    cfg = DataConfig(train=[{"path": str(f), "format": "prompt_completion"}], max_length=32, length_policy="drop")
    train, _, stats = build_datasets(cfg, tok, seed=0)
    assert stats["train"]["dropped"] == {"longer than max_length": 1} and len(train) == 2


def test_prompt_filling_max_length_is_an_error_naming_the_row(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "d.jsonl", [{"prompt": "word " * 200, "completion": "ok"}])
    cfg = DataConfig(train=[{"path": str(f), "format": "prompt_completion"}], max_length=32)
    with pytest.raises(UserError, match=r"row 1: no trained tokens remain after truncation"):
        build_datasets(cfg, tok, seed=0)


def test_eval_fraction_holds_out_rows(tok) -> None:
    cfg = DataConfig(train=[{"path": "builtin:quickstart/train.jsonl", "format": "messages"}], eval_fraction=0.1)
    train, ev, stats = build_datasets(cfg, tok, seed=0)
    assert len(ev) == 200 and len(train) == 1800
