"""The data cache: an unchanged rerun reuses the entry; a changed template, data file or option rebuilds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


@pytest.mark.parametrize("recorded", [True, False], ids=["sizes-recorded", "built-before-sizes"])
@pytest.mark.parametrize("packing", [False, True])
def test_a_cut_cache_entry_is_built_again(tok, tmp_path: Path, capsys, recorded: bool, packing: bool) -> None:
    """A train.arrow cut short after the entry was written (a bad copy, a full disk under a sync tool) gave a pyarrow
    traceback on every run. The entry's files.json (sizes), else the Arrow reader and stats.json's row counts, now
    find it: it is removed, saying so, and built again."""
    cfg = DataConfig(train=[{"path": str(FIX / "parts" / "part-0.jsonl"), "format": "messages"}],
                     cache_dir=str(tmp_path / "cache"), packing=packing, max_length=64)
    train, _, stats = build_datasets(cfg, tok, seed=0)
    rows = [r["input_ids"] for r in train]
    entry = Path(stats["cache_dir"])
    assert len(train) == stats["train_rows"]
    if not recorded:
        (entry / "files.json").unlink(missing_ok=True)  # an entry an older tunekit wrote
    arrow = entry / "train.arrow"
    os.truncate(arrow, arrow.stat().st_size // 2)
    capsys.readouterr()
    train, _, stats = build_datasets(cfg, tok, seed=0)
    assert stats["cache"] == "built" and [r["input_ids"] for r in train] == rows
    assert json.loads((entry / "files.json").read_text())["files"]["train.arrow"] == arrow.stat().st_size
    notice = " ".join(capsys.readouterr().err.split())
    assert f"the data cache entry {entry} is damaged" in notice and "building it again" in notice
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name, entry.name + ".lock"]


def test_temporary_dirs_of_builds_cut_short_are_removed_but_not_a_running_builds(tok, tmp_path: Path,
                                                                                capsys) -> None:
    """kill -9 during a build left KEY.tmpPID/ dirs (gigabytes on real data) in the cache forever. A build now
    removes those no process holds the lock of: its own key's, and other keys' whose lock is free. A build
    running elsewhere (its lock held: here by another process) keeps its dir."""
    cache = tmp_path / "cache"
    cfg = DataConfig(train=[{"path": str(FIX / "parts" / "part-0.jsonl"), "format": "messages"}],
                     cache_dir=str(cache))
    key = build_datasets(cfg, tok, seed=0)[2]["fingerprint"]
    shutil.rmtree(cache / key)
    for name in (f"{key}.tmp999999", "abandoned.tmp123", "running.tmp456"):
        (cache / name / "work").mkdir(parents=True)
        (cache / name / "train.arrow").write_bytes(b"\0" * 1000)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom filelock import FileLock\n"
                               f"with FileLock({str(cache / 'running.lock')!r}):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert build_datasets(cfg, tok, seed=0)[2]["cache"] == "built"
    finally:
        holder.kill()
        holder.wait()
    left = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert left == [key, "running.tmp456"]
    said = " ".join(capsys.readouterr().err.split())
    assert "removed 2 temporary dir(s) of builds that were cut short" in said
    assert f"{key}.tmp999999" in said and "abandoned.tmp123" in said and "running" not in said
