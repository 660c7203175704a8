"""scripts/gpu_session.sh, the one command a short GPU lease runs (docs/performance.md), kept working between
leases: `run --smoke` goes through the same stages on CPU (environment check, the gpu-marked tests, which skip
here, and one benchmark setting on the tiny shapes) and writes what the lease would bring back to $OUT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

pytestmark = pytest.mark.full  # about a minute on 2 idle cores: three tiny training processes


@pytest.mark.slow  # CI time: by hand, make test-all
def test_gpu_session_smoke_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # python3 on PATH is the one the script uses (the image's own on the GPU machine): this venv's here
    env = {**cli_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OUT": str(out),
           "WORK": str(tmp_path / "work"), "WHEELS": str(tmp_path / "no-wheels"), "STEPS": "2", "WARMUP": "1", "BUDGET": "600"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_session.sh"), "run", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    log = (out / "session.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    assert "requirements not met: none" in log and "imports: ok" in log
    assert "=== gpu tests: exit 0" in log and "skipped" in log  # collected and skipped without CUDA
    assert "=== bench lora-tiny: exit 0" in log and "GATES: PASS" in log
    table = (out / "lora-tiny" / "bench_train.md").read_text()
    for label in ("tunekit (defaults)", "tunekit (fast paths)", "TRL SFTTrainer"):
        assert f"| {label} | " in table
    assert "Unsloth" not in table  # not asked for: the lease has no room for it
    assert "=== done after" in log


def test_gpu_session_skips_a_stage_that_does_not_fit(tmp_path: Path) -> None:
    """With no budget left, every stage is skipped and says so, rather than being cut off mid-run."""
    out = tmp_path / "out"
    env = {**cli_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OUT": str(out),
           "WORK": str(tmp_path / "work"), "WHEELS": str(tmp_path / "no-wheels"),
           "BUDGET": "0"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_session.sh"), "run", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    log = (out / "session.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    assert "=== gpu tests: skipped" in log and "=== bench lora-tiny: skipped" in log
    assert not (out / "lora-tiny" / "bench_train.md").exists()
