"""Shared fixtures: the CLI in a subprocess, tiny recipes written to tmp dirs. No network, no mocks."""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

# One thread per process: pytest runs a worker per core (`-n 2`), each starting CLI processes; torch's default (a
# thread per core in every process) oversubscribes the cores, and spinning OpenMP threads then slowed in-process
# training tenfold on a CI machine. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


class ForkServer:
    """This pytest process's `tests/forkserver.py`: `python -m tunekit` runs forked from a process that imported
    torch & co. once (2 s a tiny run instead of 8). TUNEKIT_TEST_FORKSERVER=0 runs every CLI as a plain process."""

    # variables the libraries read when imported (in the server, once): a run that sets them gets its own process
    IMPORT_TIME = re.compile(r"^(HF_|HUGGINGFACE|TRANSFORMERS|TORCH|PYTORCH|OMP_|MKL_|CUDA|ACCELERATE|DS_|TRL|"
                             r"TOKENIZERS|PYTHON(?!UNBUFFERED))")
    _proc: subprocess.Popen | None = None
    _env: dict[str, str] = {}

    @classmethod
    def usable(cls, args: list[str], env: dict[str, str]) -> bool:
        """Whether a run with ARGS and ENV can be forked (not a --verbose one: the server quiets the libraries
        before importing them); the server is (re)started when a variable the libraries read at import time differs
        from the server's."""
        if (os.environ.get("TUNEKIT_TEST_FORKSERVER", "1") == "0" or not hasattr(os, "fork") or "--verbose" in args
                or env.get("TUNEKIT_VERBOSE", "") not in ("", "0")):
            return False
        if cls._proc is not None and cls._proc.poll() is None and not any(
                cls.IMPORT_TIME.match(k) and env.get(k) != cls._env.get(k) for k in set(env) | set(cls._env)):
            return True
        if cls._proc is not None:
            cls._proc.kill()
            cls._proc.wait()
        cls._env = dict(env)
        cls._proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "forkserver.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=REPO)
        atexit.register(cls._proc.kill)
        if cls._read(None) == {"ready": True}:
            return True
        cls._proc = None
        return False

    @classmethod
    def _read(cls, timeout: float | None) -> dict | None:
        assert cls._proc is not None and cls._proc.stdout is not None
        if timeout is not None and not select.select([cls._proc.stdout], [], [], timeout)[0]:
            return None
        line = cls._proc.stdout.readline()
        return json.loads(line) if line else {"ready": False}

    @classmethod
    def run(cls, args: list[str], cwd: Path | None, env: dict[str, str],
            timeout: float | None) -> subprocess.CompletedProcess:
        assert cls._proc is not None and cls._proc.stdin is not None
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            out.touch()
            err.touch()
            req = {"args": args, "cwd": str(cwd or Path.cwd()), "env": env, "stdout": str(out), "stderr": str(err)}
            cls._proc.stdin.write((json.dumps(req) + "\n").encode())
            cls._proc.stdin.flush()
            pid = cls._read(None)["pid"]
            done = cls._read(timeout)
            if done is None:
                os.kill(pid, signal.SIGKILL)
                cls._read(None)
                raise subprocess.TimeoutExpired(args, timeout, out.read_text(), err.read_text())
            return subprocess.CompletedProcess(["tunekit", *args], done["code"], out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))


def tunekit_process(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
                    timeout: float | None = None) -> subprocess.CompletedProcess:
    """`python -m tunekit ARGS` to completion (text output): through the fork server where it can be used."""
    args, env = [str(a) for a in args], env or cli_env()
    if ForkServer.usable(args, env):
        return ForkServer.run(args, cwd, env, timeout)
    return subprocess.run([sys.executable, "-m", "tunekit", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def run_cli(*args: str, cwd: Path | None = None, check: bool = False,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tunekit ARGS` as a user would; returns the completed process (text output)."""
    proc = tunekit_process(list(args), cwd=cwd, timeout=timeout)
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
