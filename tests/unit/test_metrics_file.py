"""metrics.jsonl is strict JSON, one whole row per line: a diverged step's NaN/inf is null (with `non_finite`
saying what it was), and every reader skips it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers.trainer_callback import TrainerControl, TrainerState

from tunekit.eval.report import loss_points, read_metrics
from tunekit.metrics import final_train_loss, metrics_callback


def strict(line: str) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def test_a_non_finite_value_is_written_as_null_and_named(tmp_path: Path) -> None:
    """It was written as a bare NaN token, which strict JSON parsers (jq, JavaScript, Go, serde) refuse."""
    writer = metrics_callback(tmp_path)
    args, state, control = None, TrainerState(), TrainerControl()  # the writer reads no training argument
    for step, loss, grad in ((1, 6.25, 3.0), (2, math.nan, math.inf)):
        state.global_step = step
        writer.on_log(args, state, control, logs={"loss": loss, "grad_norm": grad, "learning_rate": 1e-3})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [strict(ln) for ln in lines]
    assert rows[0]["loss"] == 6.25 and "non_finite" not in rows[0]
    assert rows[1]["loss"] is None and rows[1]["grad_norm"] is None and rows[1]["learning_rate"] == 1e-3
    assert rows[1]["non_finite"] == {"loss": "nan", "grad_norm": "inf"}
    assert math.isnan(writer.last_row["loss"])  # the console line still shows what happened
    assert final_train_loss(tmp_path) is None  # never a loss that was not seen
    assert loss_points(read_metrics(tmp_path / "metrics.jsonl"))[0] == [(1, 6.25)]


def test_a_row_that_does_not_fit_on_the_disk_is_not_left_in_part(tmp_path: Path) -> None:
    """A full disk mid-row left a cut last line, which every later reader (and --resume's truncation) failed
    on. The row is now written whole or cut back off. The process's file size limit (RLIMIT_FSIZE) stands in for
    the full disk: the write fails with EFBIG where it would fail with ENOSPC."""
    import resource
    import signal
    import subprocess
    import sys

    code = f"""
from pathlib import Path
from transformers.trainer_callback import TrainerControl, TrainerState
from tunekit.metrics import metrics_callback
out = Path({str(tmp_path)!r})
writer, state, args = metrics_callback(out), TrainerState(), None
for step in (1, 2):
    state.global_step = step
    try:
        writer.on_log(args, state, TrainerControl(), logs={{"loss": 6.25, "learning_rate": 1e-3}})
    except OSError as e:
        print("failed", e.errno, e.filename)
"""

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))  # one row (~230 bytes) fits, two do not

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=cap, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1  # the first row, whole; none of the second
    assert [strict(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert f"failed 27 {tmp_path / 'metrics.jsonl'}" in proc.stdout  # EFBIG, naming the file
