"""Runs that stop early stop safely: SIGINT/SIGTERM at a step boundary with a checkpoint and a resume hint (exit
130/143), a second Ctrl-C at once, and divergence (non-finite loss) without writing non-finite weights. Real CLI
runs on the builtin tiny model, signalled with os.kill once they log their first step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_cli, tiny_recipe


def trained(run: Path, err: list[str]) -> bool:
    return (run / "metrics.jsonl").exists() and bool((run / "metrics.jsonl").read_text().strip())


def start_and_signal(recipe: Path, run: Path, *signals: int,
                     ready: Callable[[Path, list[str]], bool] = trained) -> tuple[int, str]:
    """Start `tunekit train RECIPE`, wait until `ready(run, stderr lines)` (default: its first metrics line), send
    the first signal; each further one as soon as the run said it is stopping (so it lands while the run is still
    stopping). Returns (exit, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "tunekit", "train", str(recipe)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.time() + 240
        while not ready(run, err):
            assert proc.poll() is None and time.time() < deadline, "".join(err)[-3000:]
            time.sleep(0.005)
        for i, s in enumerate(signals):
            while i and "stoppingattheend" not in squash("".join(err)):
                assert proc.poll() is None and time.time() < deadline, "the run did not say it is stopping"
                time.sleep(0.005)
            os.kill(proc.pid, s)
        proc.wait(timeout=240)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(err)


def squash(text: str) -> str:
    """Text without whitespace: rich wraps long lines (and paths) at the terminal width."""
    return "".join(text.split())


def checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))


@pytest.mark.full
def test_ctrl_c_stops_at_a_step_with_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 5000})
    run = tmp_path / "run"
    code, err = start_and_signal(recipe, run, signal.SIGINT)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and squash("Resume with the same command and --resume") in squash(err)
    (step,) = checkpoints(run)
    assert squash(f"stopped by SIGINT (Ctrl-C) at step {step}: checkpoint written to {run}/checkpoints/checkpoint-{step}") \
        in squash(err)
    assert not (run / "final").exists() and not (run / "summary.json").exists()
    proc = run_cli("train", recipe, "--resume", f"trainer.max_steps={step + 2}", check=True)
    assert squash(f"resuming from {run}/checkpoints/checkpoint-{step}") in squash(proc.stderr)
    assert json.loads((run / "summary.json").read_text())["global_step"] == step + 2
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == list(range(1, step + 3))


def test_sigterm_stops_with_a_checkpoint_and_exit_143(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 5000})
    run = tmp_path / "run"
    code, err = start_and_signal(recipe, run, signal.SIGTERM)
    assert code == 143 and "Traceback" not in err, err[-3000:]
    (step,) = checkpoints(run)
    assert squash(f"stopped by SIGTERM at step {step}") in squash(err) and "--resume" in err
    assert (run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file()


def test_a_second_ctrl_c_aborts_at_once(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 5000})
    code, err = start_and_signal(recipe, tmp_path / "run", signal.SIGINT, signal.SIGINT)
    assert code == 130 and squash("aborting at once (second signal)") in squash(err), err[-3000:]
    assert "Traceback" not in err
    # what was lost and where --resume goes on from
    assert squash("stopped by SIGINT (Ctrl-C) (second signal) during a step, without saving it:") in squash(err)


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 6, "learning_rate": 1e30}, output={"save_steps": 1})
    run = tmp_path / "run"
    proc = run_cli("train", recipe)
    err = squash(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in err, proc.stderr[-3000:]
    assert squash("training diverged: the gradient at step 2 is not finite") in err
    assert squash(f"the last good checkpoint is {run}/checkpoints/checkpoint-1") in err
    assert squash("Lower trainer.learning_rate") in err
    assert checkpoints(run) == [1]  # the diverged step was not saved
    assert not (run / "final").exists() and not (run / "summary.json").exists()


def test_divergence_before_any_checkpoint_says_to_start_again(tmp_path: Path) -> None:
    """With no checkpoint written before the divergence, the message said to continue "from that checkpoint with
    --resume --allow-changes", which then failed ("no checkpoint"). Now it says to start again with --overwrite."""
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 6, "learning_rate": 1e30})  # saves by time only: none yet
    proc = run_cli("train", recipe)
    err = squash(proc.stderr)
    assert proc.returncode == 2 and squash("training diverged") in err, proc.stderr[-3000:]
    assert squash("no checkpoint was written before it") in err and "--resume" not in err
    assert squash("then start again with --overwrite") in err
    assert checkpoints(tmp_path / "run") == []


def test_a_saturated_model_with_zero_gradients_is_warned_about(tmp_path: Path) -> None:
    """A huge learning rate without clipping: step 2's loss spikes (finite), then every gradient is exactly 0 and the
    loss stays flat: the rest of the run trained nothing, and nothing said so. Now one warning names the step and
    the learning rate; the run goes on (it is not an error: the user may stop it)."""
    recipe = tiny_recipe(tmp_path, method={"name": "full"},
                         trainer={"max_steps": 6, "learning_rate": 1000.0, "max_grad_norm": 0})
    proc = run_cli("train", recipe)
    err = squash(proc.stderr)
    grads = [r["grad_norm"] for r in read_metrics(tmp_path / "run") if "grad_norm" in r]
    assert proc.returncode == 0 and grads[-1] == 0, (grads, proc.stderr[-3000:])
    first = next(i for i, g in enumerate(grads) if g == 0) + 1
    assert err.count(squash("the gradient is exactly 0")) == 1
    assert squash(f"warning: step {first}: the gradient is exactly 0") in err
    assert squash("trainer.learning_rate 1000 is too high") in err


@pytest.mark.full
@pytest.mark.multiprocess
@pytest.mark.slow  # CI time: by hand, make test-all
def test_sigterm_to_a_two_process_run_stops_every_rank_at_one_step(tmp_path: Path) -> None:
    """SIGTERM reaches only `tunekit train --nproc 2` (as from Slurm): it is forwarded through torchrun, both ranks
    stop at the same step and save one checkpoint; --resume with two processes finishes."""
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 5000, "per_device_batch_size": 2})
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tunekit", "train", str(recipe), "--nproc", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, "the run did not start training"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    (step,) = checkpoints(run)
    assert squash(f"stopped by SIGTERM at step {step}") in squash(err)
    assert {"rng_state_0.pth", "rng_state_1.pth", "tunekit-manifest.json"} <= {
        p.name for p in (run / "checkpoints" / f"checkpoint-{step}").iterdir()}
    run_cli("train", recipe, "--nproc", "2", "--resume", f"trainer.max_steps={step + 2}", check=True)
    assert json.loads((run / "summary.json").read_text())["global_step"] == step + 2


def test_a_signal_after_training_says_the_run_is_complete_and_what_did_not_run(tmp_path: Path) -> None:
    """A SIGTERM once `done:` was printed (the model card, eval.run_after_train) ends the process with 143 saying
    that final/ and summary.json are complete and that the eval did not run (the default handler killed it without
    a word, and --resume then says `already finished`)."""
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 2}, eval={"run_after_train": True},
                         data={"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages"}],
                               "eval": [{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}],
                               "max_length": 64})
    run = tmp_path / "run"
    code, err = start_and_signal(recipe, run, signal.SIGTERM,
                                 ready=lambda _, lines: any(line.startswith("done:") for line in lines))
    text = squash(err)
    assert code == 143 and "Traceback" not in text, err[-3000:]
    assert squash(f"stopped by SIGTERM after training: the run is complete ({run}/final, summary.json); the eval "
                  f"(eval.run_after_train) did not run: run `tunekit eval {run}`") in text
    assert (run / "summary.json").is_file() and (run / "final" / "README.md").is_file()
    assert not (run / "eval" / "report.json").exists()
