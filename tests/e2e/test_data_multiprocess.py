"""Several processes starting at once (like the ranks of a launch) preprocess once: one builds, the rest load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PROGRAM = """
import json, sys
from transformers import AutoTokenizer
from tunekit.data.build import build_datasets
from tunekit.data.schema import DataConfig
from tunekit.model.builtin import TOKENIZER_DIR

tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
cfg = DataConfig(train=[{"path": "builtin:quickstart/train.jsonl", "format": "messages"}], packing=True,
                 max_length=256, cache_dir=sys.argv[1])
train, _, stats = build_datasets(cfg, tok, seed=0)
print(json.dumps({"cache": stats["cache"], "rows": len(train)}))
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_concurrent_processes_build_the_cache_once(tmp_path: Path) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(prog), str(cache)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["cache"] for r in results) == ["built", "reused", "reused"]
    assert len({r["rows"] for r in results}) == 1
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # one entry, no temporary leftovers
