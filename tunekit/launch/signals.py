"""SIGINT/SIGTERM across the processes of a relaunched run: what counts as one request, and how the parent learns
that its workers stopped on a signal.

One stop request reaches a torchrun worker several times: a scheduler (Slurm at its time limit or on preemption,
`scancel`, Kubernetes) signals every process of the job, torchrun forwards the signal it got itself, and torchrun
sends SIGTERM again when a second signal interrupts its own shutdown (the parent forwarding its copy). So, under a
launcher, any SIGINT/SIGTERM within `REPEAT_WINDOW_S` of the first is that same request (guards); one later is a
deliberate second signal and aborts at once. The relaunching parent forwards only the first and the deliberate
ones; a deliberate one also goes to the workers directly, since torchrun can exit on a second signal without
passing it on.

A worker that stops on a signal the ranks agreed on (or after training) writes the signal number to the file named
by `STOP_FILE_ENV` (set by the relaunching parent) and exits 0, so that torchrun neither reports it as failed nor
kills the ranks still finishing their part of the checkpoint; the parent then exits 128 + that number (130, 143).
A worker that aborts at once does not: torchrun also sends SIGTERM to the ranks left when one failed, and that run
failed (the parent says so, exit 1) unless the parent was signalled itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tunekit.launch.runtime import under_launcher

REPEAT_WINDOW_S = 5.0
STOP_FILE_ENV = "TUNEKIT_STOP_FILE"
NAMES: dict[int, str] = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


def signal_name(signum: int) -> str:
    return NAMES.get(signum, str(signum))


def record_stop(signum: int) -> bool:
    """In a worker of a relaunched run: tell the parent that this process stops on `signum`. False elsewhere."""
    path = os.environ.get(STOP_FILE_ENV)
    if not path or not under_launcher():
        return False
    with contextlib.suppress(OSError):
        Path(path).write_text(str(signum))
    return True


@contextlib.contextmanager
def stop_file() -> Iterator[Path]:
    """A fresh, empty file for the workers' `record_stop`; removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="tunekit-stop-")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def recorded_stop(path: Path) -> int | None:
    text = path.read_text().strip() if path.is_file() else ""
    return int(text) if text.isdigit() else None


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None when it is gone or a zombie: with the pid it
    names one process (pids are reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]


def children(pid: int) -> list[tuple[int, str]]:
    """The launcher's child processes (the workers) as (pid, start time); empty where /proc is not there."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append((int(entry.name), fields[19]))
    return found


def alive(workers: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(pid, start) for pid, start in workers if _start_time(pid) == start]


class Forwarder:
    """The relaunching parent's SIGINT/SIGTERM handler (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.got: list[int] = []
        self.first_at = 0.0
        self.workers: list[tuple[int, str]] = []

    def __call__(self, signum: int, frame: object) -> None:  # noqa: ARG002
        now = time.monotonic()
        if self.got and now - self.first_at < REPEAT_WINDOW_S:
            return  # the same request: the launcher got it already (from us, or from the scheduler or terminal)
        if not self.got:
            self.first_at, self.workers = now, children(self.proc.pid)
        elif self.workers:  # deliberate: abort at once, also where torchrun exits without passing it on
            for pid, _ in alive(self.workers):
                with contextlib.suppress(OSError):  # each worker leads its own process group (torchrun's doing)
                    os.killpg(pid, signum)
        self.got.append(signum)
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_for_workers(self) -> None:
        """After the launcher exited: wait for workers it left running (it can exit on a second signal before they
        did), so the run is over when `tunekit train` returns. A further signal still reaches them (`__call__`)."""
        while alive(self.workers):
            time.sleep(0.2)
