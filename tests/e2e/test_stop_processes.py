"""Signals as schedulers and users send them to the processes of a run: to one rank only, to every process at once
(Slurm at its time limit), a repeat forwarded by the launcher, a deliberate second Ctrl-C, one during the last
step. Real CLI runs of the builtin tiny model, signalled with os.kill; the processes are found through /proc
(Linux)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli_env, run_cli, tiny_recipe
from tests.e2e.test_stop import checkpoints, squash
from tunekit.launch.signals import REPEAT_WINDOW_S


class Run:
    """`tunekit train RECIPE ARGS` in its own session (a terminal's process group), stderr collected."""

    def __init__(self, recipe: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.run = recipe.parent / "run"  # tiny_recipe's output.dir
        self.proc = subprocess.Popen([sys.executable, "-m", "tunekit", "train", str(recipe), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**cli_env(), **(env or {})}, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)  # type: ignore[arg-type]
        self.reader.start()

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_for(self, test, what: str, timeout: float = 300) -> None:  # noqa: ANN001
        deadline = time.time() + timeout
        while not test():
            assert self.proc.poll() is None, f"the run ended before {what}:\n{self.err[-3000:]}"
            assert time.time() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.05)

    def wait_for_training(self) -> None:
        metrics = self.run / "metrics.jsonl"
        self.wait_for(lambda: metrics.exists() and metrics.read_text().strip(), "first logged step")

    def wait(self, timeout: float = 300) -> int:
        """The exit code of `tunekit train` (killed after `timeout`)."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def finish(self, timeout: float = 300) -> int:
        """`wait`, then all of stderr (which stays open while a process that inherited it runs)."""
        code = self.wait(timeout)
        self.reader.join(timeout=30)
        return code


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def workers(launcher: int) -> dict[int, int]:
    """rank -> pid of the workers the launcher (torchrun) started."""
    ranks = {}
    for pid in children(launcher):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = pid
    return ranks


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def two_process_recipe(tmp_path: Path, **trainer: int) -> Path:
    return tiny_recipe(tmp_path, trainer={"max_steps": 5000, "per_device_batch_size": 2, **trainer},
                       output={"save_steps": 100000})


@pytest.mark.full
@pytest.mark.multiprocess
@pytest.mark.parametrize("rank", [pytest.param(1, marks=pytest.mark.slow), 0])  # slow: CI time, make test-all
def test_sigterm_to_one_rank_is_a_signal_stop_on_every_rank(tmp_path: Path, rank: int) -> None:
    """A SIGTERM that reaches one rank only: every rank stops at the agreed step as for a signal (no final/, no
    summary.json: rank 0 took it for the end of training when rank 1 got it), the stop line is printed once, the
    run exits 143 (it said `failed`, exit 1, when rank 0 got it) and --resume continues."""
    recipe = two_process_recipe(tmp_path)
    run = Run(recipe, "--nproc", "2")
    run.wait_for_training()
    (launcher,) = children(run.proc.pid)
    os.kill(workers(launcher)[rank], signal.SIGTERM)
    code, err = run.finish(), run.err
    assert code == 143, err[-3000:]
    (step,) = checkpoints(run.run)
    assert squash(err).count(squash(f"stopped by SIGTERM at step {step}: checkpoint written")) == 1, err[-3000:]
    assert "Traceback" not in err and "run failed" not in err, err[-3000:]
    assert not (run.run / "final").exists() and not (run.run / "summary.json").exists()
    if rank == 1:
        run_cli("train", recipe, "--nproc", "2", "--resume", f"trainer.max_steps={step + 2}", check=True)
        assert json.loads((run.run / "summary.json").read_text())["global_step"] == step + 2


@pytest.mark.full
@pytest.mark.multiprocess
@pytest.mark.slow  # CI time: by hand, make test-all
def test_sigterm_to_every_process_stops_at_the_step_with_a_checkpoint(tmp_path: Path) -> None:
    """Slurm at its time limit signals every process of the job: each worker gets SIGTERM directly and again from
    torchrun, which forwards its own (and the parent's). The copies are one request: the workers finish the step
    and save it (they aborted without a checkpoint when a copy came during the step). The copies to torchrun and
    the parent go once the workers took the first (sent together, a worker can take them as one signal)."""
    recipe = two_process_recipe(tmp_path, gradient_accumulation_steps=100)  # steps of 1-3 s: the copies land in one
    run = Run(recipe, "--nproc", "2")
    run.wait_for_training()
    (launcher,) = children(run.proc.pid)
    for pid in workers(launcher).values():
        os.kill(pid, signal.SIGTERM)
    run.wait_for(lambda: "stoppingattheend" in squash(run.err), "the stopping notice")
    os.kill(launcher, signal.SIGTERM)
    os.kill(run.proc.pid, signal.SIGTERM)
    code, err = run.finish(), run.err
    assert code == 143, err[-3000:]
    assert "aborting at once" not in err, err[max(0, err.find("aborting at once") - 4000):][:6000]
    assert squash("already stopping at the end of this step") in squash(err), err[-5000:]
    (step,) = checkpoints(run.run)
    assert squash(err).count(squash(f"stopped by SIGTERM at step {step}: checkpoint written")) == 1, err[-3000:]


def test_a_repeat_within_the_window_is_the_same_request_under_a_launcher(tmp_path: Path) -> None:
    """A process started by a launcher (its environment says so) takes a second SIGTERM right after the first as
    the same request (a forwarded copy): it stops at the step with a checkpoint instead of aborting."""
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 5000, "gradient_accumulation_steps": 20})  # ~0.5 s steps
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = Run(recipe, env={"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port)})  # what torchrun --nproc-per-node 1 gives its worker
    run.wait_for_training()
    os.kill(run.proc.pid, signal.SIGTERM)
    run.wait_for(lambda: "stoppingattheend" in squash(run.err), "the stopping notice")
    os.kill(run.proc.pid, signal.SIGTERM)
    code, err = run.finish(), run.err
    assert code == 143 and "aborting at once" not in err, err[-3000:]
    assert squash("SIGTERM: already stopping at the end of this step") in squash(err)
    (step,) = checkpoints(run.run)
    assert squash(f"stopped by SIGTERM at step {step}: checkpoint written") in squash(err)


@pytest.mark.full
@pytest.mark.multiprocess
@pytest.mark.slow  # CI time: by hand, make test-all
def test_a_deliberate_second_ctrl_c_aborts_every_rank_before_tunekit_returns(tmp_path: Path) -> None:
    """Ctrl-C twice in a terminal, the second after the repeat window: every worker aborts at once, and `tunekit
    train` returns only once they are gone (torchrun exited on the second signal and left its workers running)."""
    # a step is at most an epoch (the Trainer steps at each epoch's end): 3 copies of the data and 1500 micro-batches
    # per step give steps of 15-30 s on 2 CPU cores, so both signals land in the second one
    recipe = two_process_recipe(tmp_path, gradient_accumulation_steps=1500)
    data = yaml.safe_load(recipe.read_text())
    data["data"]["train"] *= 3
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    run = Run(recipe, "--nproc", "2")
    run.wait_for_training()
    (launcher,) = children(run.proc.pid)
    ranks = workers(launcher)
    os.killpg(run.proc.pid, signal.SIGINT)  # what the terminal does: the parent and torchrun (not the workers)
    time.sleep(REPEAT_WINDOW_S + 1)
    os.killpg(run.proc.pid, signal.SIGINT)
    code = run.wait(timeout=120)
    left = [pid for pid in ranks.values() if alive(pid)]  # the moment `tunekit train` returned
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    run.reader.join(timeout=30)
    err = run.err
    assert code == 130 and not left, err[-3000:]
    assert squash("step 2/") not in squash(err), "the step ended before the second signal: make steps longer"
    assert squash("aborting at once (second signal)") in squash(err), err[-3000:]
    assert squash("without saving it: no checkpoint was written yet") in squash(err)
    assert checkpoints(run.run) == []


def test_a_stop_asked_during_the_last_step_finishes_training_then_skips_the_eval(tmp_path: Path) -> None:
    """A signal during the last step: training finishes (final/, summary.json), and the process then stops instead
    of going on into eval.run_after_train, saying so (exit 143; it ran the eval and exited 0)."""
    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 2, "gradient_accumulation_steps": 20},  # ~0.5 s steps
                         eval={"run_after_train": True},
                         data={"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages"}],
                               "eval": [{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}],
                               "max_length": 64})
    run = Run(recipe)
    run.wait_for_training()  # step 1 logged: the signal lands in step 2
    os.kill(run.proc.pid, signal.SIGTERM)
    code, err = run.finish(), run.err
    assert code == 143, err[-3000:]
    assert squash("done: 2 steps") in squash(err)
    assert squash("stopped by SIGTERM after training: the run is complete") in squash(err)
    assert squash(f"the eval (eval.run_after_train) did not run: run `tunekit eval {run.run}`") in squash(err)
    assert (run.run / "summary.json").is_file() and not (run.run / "eval").exists()
