"""Shared fixtures: the CLI in a subprocess, tiny recipes written to tmp dirs. No network, no mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


@pytest.fixture(scope="session", autouse=True)
def _offline_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Builtin models are materialised once per test session into this cache.
    os.environ.setdefault("TUNEKIT_CACHE", str(tmp_path_factory.mktemp("tunekit-cache")))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["COLUMNS"] = "1000"  # also for tests that start processes themselves (see cli_env)


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess. rich folds stderr at 80 columns when it is not a terminal, and a path
    (its length depends on the user name and pytest's tmp counter) folded mid-word breaks the substring checks on
    the CLI's messages: wide lines instead (only for the CLI: pytest's own output keeps the terminal's width)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"}


def run_cli(*args: str, cwd: Path | None = None, check: bool = False,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tunekit ARGS` as a user would; returns the completed process (text output)."""
    proc = subprocess.run([sys.executable, "-m", "tunekit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=cli_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tunekit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def tiny_recipe(tmp: Path, name: str = "recipe.yaml", **sections: dict) -> Path:
    """A fast SFT recipe on builtin:tiny-llama; keyword sections are merged over the defaults."""
    recipe = {
        "model": {"path": "builtin:tiny-llama", "dtype": "float32"},
        "data": {"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages"}], "max_length": 64},
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "trainer": {"kind": "sft", "learning_rate": 5e-3, "max_steps": 8, "per_device_batch_size": 4,
                    "logging_steps": 1, "seed": 0},
        "output": {"dir": str(tmp / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict) and key != "method":
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = tmp / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses(run: Path) -> list[float]:
    """The training loss of every logged step of RUN, in order."""
    return [m["loss"] for m in read_metrics(run) if "loss" in m]
