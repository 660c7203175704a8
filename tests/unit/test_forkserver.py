"""The test suite's fork server (tests/forkserver.py) runs the CLI as a plain `python -m tunekit` process does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RECIPES, ForkServer, cli_env, tiny_recipe, tunekit_process


def plain(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunekit", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(), cwd=cwd)


@pytest.mark.parametrize("args", [["validate", RECIPES / "quickstart.yaml", "trainer.max_steps=7"],
                                  ["validate", "missing.yaml"],  # exit 2, relative to the working directory
                                  ["--version"], ["train", "--help"]])
def test_a_forked_run_prints_and_exits_as_a_plain_process(args: list, tmp_path: Path) -> None:
    assert ForkServer.usable([str(a) for a in args], cli_env())
    forked, ref = tunekit_process(args, cwd=tmp_path), plain(args, cwd=tmp_path)
    assert (forked.returncode, forked.stdout, forked.stderr) == (ref.returncode, ref.stdout, ref.stderr)


def test_a_run_past_its_timeout_is_killed_and_the_server_goes_on(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 100000})
    with pytest.raises(subprocess.TimeoutExpired):
        tunekit_process(["train", recipe], timeout=3)
    assert tunekit_process(["--version"]).stdout.startswith("tunekit ")
