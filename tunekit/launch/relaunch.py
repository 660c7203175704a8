"""Re-execute `tunekit train` under torchrun / accelerate launch (never a home-made launcher).

When the launch section asks for more than one process (or for DeepSpeed / FSDP, which need a distributed
environment), `tunekit train` re-executes itself as

    python -m torch.distributed.run --nproc-per-node N ... -m tunekit train RECIPE OVERRIDES...

with the same interpreter and PYTHONPATH, and exits with the launcher's exit code. A process that is
already under torchrun or accelerate is never relaunched: it trains as one rank of that run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tunekit import checkpoints, run_dir
from tunekit.launch import signals
from tunekit.launch.rules import check_resume, check_runnable
from tunekit.launch.runtime import under_launcher
from tunekit.ui import console

if TYPE_CHECKING:
    from tunekit.launch.schema import LaunchConfig
    from tunekit.recipe.schema import Recipe

# CLI flag -> recipe field they override (flags are sugar for `launch.X=VALUE` overrides).
FLAG_FIELDS = {"nproc": "nproc", "nnodes": "nnodes", "node_rank": "node_rank", "master_addr": "master_addr",
               "master_port": "master_port", "strategy": "strategy"}


def flag_overrides(**flags: object) -> list[str]:
    """`--nproc 2 --nnodes 1` -> [`launch.nproc=2`, `launch.nnodes=1`] (unset flags are skipped)."""
    return [f"launch.{FLAG_FIELDS[k]}={v}" for k, v in flags.items() if v is not None]


def needs_relaunch(launch: LaunchConfig) -> bool:
    if under_launcher():
        return False
    return launch.world_size > 1 or launch.resolved_strategy in ("deepspeed", "fsdp")


def prepare(recipe: Recipe, resume: bool, overwrite: bool) -> bool:
    """Checks made once, before any worker starts: the machine can run it, and (on node 0) the run dir is usable
    (not a non-empty dir without --overwrite; under --resume, a checkpoint that this process count can resume).
    True when there is nothing to launch (`--resume` of a finished run, said so)."""
    check_runnable(recipe.launch)
    out = Path(recipe.output.dir)
    done = run_dir.finished(out, recipe) if resume else None
    if done:
        console.print(done)
        return True
    if recipe.launch.node_rank != 0:
        return False
    run_dir.prepare_run_dir(out, resume=resume, overwrite=overwrite)
    checkpoint = checkpoints.latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        check_resume(checkpoint, recipe.launch.world_size)
    return False


def launcher_command(launch: LaunchConfig, worker_args: list[str]) -> list[str]:
    """The launcher command line; `worker_args` follow `-m tunekit` (e.g. train RECIPE overrides...)."""
    ln = launch
    if ln.launcher == "accelerate":
        import torch

        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(ln.world_size),
               "--num_machines", str(ln.nnodes), "--machine_rank", str(ln.node_rank),
               "--main_process_ip", ln.master_addr, "--main_process_port", str(ln.master_port),
               "--mixed_precision", "no", "--dynamo_backend", "no", "--max_restarts", "0"]
        if not torch.cuda.is_available():
            cmd.append("--cpu")  # accelerate: multi-process CPU (gloo); --cpu excludes --multi_gpu
        elif ln.world_size > 1:
            cmd.append("--multi_gpu")
        return [*cmd, "-m", "tunekit", *worker_args]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ln.nproc),
           "--nnodes", str(ln.nnodes), "--max-restarts", "0"]
    if ln.nnodes == 1:
        cmd.append("--standalone")  # rendezvous on a free local port; no master_addr/port needed
    else:
        cmd += ["--node-rank", str(ln.node_rank), "--master-addr", ln.master_addr, "--master-port", str(ln.master_port)]
    return [*cmd, "-m", "tunekit", *worker_args]


SHUTDOWN_TIMEOUT_S = 300


def worker_env() -> dict[str, str]:
    """The parent's environment plus a PYTHONPATH that makes workers import this very tunekit. torchrun, once it
    passed a signal on, SIGKILLs the workers still running after TORCH_ELASTIC_SHUTDOWN_TIMEOUT (its default: 30 s),
    which on GPUs can fall inside the step and checkpoint they are finishing: `SHUTDOWN_TIMEOUT_S` unless set."""
    env = dict(os.environ)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    here = str(Path(__file__).resolve().parent.parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([here, *[p for p in parts if p != here]])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def relaunch(launch: LaunchConfig, worker_args: list[str]) -> int:
    """Run the launcher, stream its output, and return its exit code. A failing rank ends the whole run:
    torchrun stops the other ranks and prints the failing rank, its exit code and error. A run stopped by a
    signal (sent to this process, to a worker, or to all of them) exits 128 + the signal (130, 143)."""
    cmd = launcher_command(launch, worker_args)
    ln = launch
    console.print(f"launch: {ln.resolved_strategy} with {ln.nproc} process(es) x {ln.nnodes} node(s) "
                  f"via {ln.launcher}: {' '.join(cmd)}")
    with signals.stop_file() as record:
        proc = subprocess.Popen(cmd, env={**worker_env(), signals.STOP_FILE_ENV: str(record)})
        # SIGTERM from Slurm/Kubernetes may reach only us: forwarded to the launcher, which passes it to every
        # worker; they stop at a step boundary and save (signals.py: repeats, and a deliberate second signal)
        forward = signals.Forwarder(proc)
        previous = {s: signal.signal(s, forward) for s in signals.NAMES}
        try:
            proc.wait()
            forward.wait_for_workers()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        stopped = signals.recorded_stop(record)
    if forward.got or stopped:  # rank 0 printed how the run stopped
        return 128 + (forward.got[0] if forward.got else stopped or 0)
    if proc.returncode != 0:
        console.print(f"[red]error:[/] the {ln.world_size}-process run failed (exit code {proc.returncode}): the "
                      "launcher's `Root Cause` summary above names the rank that failed first and its exit code; "
                      "an error tunekit caught is that rank's `rank N/W: error:` line; the other ranks' errors "
                      "follow from it (the launcher's SIGTERM stops them: a `SIGTERM: stopping` line of theirs is "
                      "that, not a stop you asked for). `exitcode: -9` (SIGKILL) is most often the out-of-memory "
                      "killer: `tunekit plan RECIPE` shows the memory a process needs (smaller "
                      "trainer.per_device_batch_size or data.max_length need less).")
    return proc.returncode
