"""Hub ids without a network: an immediate, clear error when the model is not cached; the local Hugging Face cache
used at once (no retries) when it is. The hub is made unreachable by pointing HF_ENDPOINT at a closed local port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env, tiny_recipe
from tunekit.model import builtin

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in cli_env().items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                            "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=UNREACHABLE, HF_HOME=str(tmp / "hf"))
    return subprocess.run([sys.executable, "-m", "tunekit", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_uncached_hub_model_without_network_fails_at_once(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, model={"path": "some-org/some-model"})
    for args in (["validate", str(recipe), "--params"], ["train", str(recipe)]):
        proc = _run(tmp_path, *args)
        assert proc.returncode == 2, proc.stderr
        assert "`some-org/some-model` is a Hugging Face Hub id, but the hub (http://127.0.0.1:9) cannot be " \
               "reached" in proc.stderr
        assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr


def test_cached_hub_model_without_network_loads_from_the_cache(tmp_path: Path) -> None:
    """A model in the local HF cache (laid out as `hf download` leaves it) trains with the hub unreachable."""
    os.environ.setdefault("TUNEKIT_CACHE", str(tmp_path / "tk"))
    src = builtin.materialize("builtin:tiny-llama", 0)
    repo = tmp_path / "hf" / "hub" / "models--some-org--cached-model"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(src, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    recipe = tiny_recipe(tmp_path, model={"path": "some-org/cached-model", "dtype": "float32"},
                         trainer={"max_steps": 2})
    proc = _run(tmp_path, "train", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Retrying" not in proc.stderr
    assert (tmp_path / "run" / "summary.json").is_file()
