"""The data cache: an unchanged rerun reuses the entry; a changed template, data file or option rebuilds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tunekit.data.build import build_datasets
from tunekit.data.schema import DataConfig
from tunekit.data.templates import load_template
from tunekit.model.builtin import TOKENIZER_DIR

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "data"


@pytest.fixture()
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def test_cache_reused_when_unchanged_and_rebuilt_on_any_change(tok, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    shutil.copyfile(FIX / "parts" / "part-0.jsonl", data)
    cfg = DataConfig(train=[{"path": str(data), "format": "messages"}], cache_dir=str(tmp_path / "cache"))

    def build(c: DataConfig = cfg) -> tuple[str, str, list]:
        train, _, stats = build_datasets(c, tok, seed=0)
        return stats["cache"], stats["fingerprint"], [r["input_ids"] for r in train]

    state, fp, ids = build()
    assert state == "built"
    assert build() == ("reused", fp, ids)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1  # one entry, no temporary dirs

    # A changed tokenizer template invalidates the cache (and changes the tokens).
    tok.chat_template = load_template("llama3")
    state, fp2, ids2 = build()
    assert state == "built" and fp2 != fp and ids2 != ids

    # A changed data file (same path) invalidates it too.
    data.write_text(data.read_text().replace("plus", "and"))
    state, fp3, _ = build()
    assert state == "built" and fp3 not in (fp, fp2)
    assert build()[0] == "reused"

    # So does any data option, e.g. packing or max_length.
    assert build(cfg.model_copy(update={"packing": True}))[0] == "built"
    assert build(cfg.model_copy(update={"max_length": 512}))[0] == "built"
    # The cache location itself is not part of the key.
    assert build(cfg.model_copy(update={"cache_dir": str(tmp_path / "cache")}))[0] == "reused"
