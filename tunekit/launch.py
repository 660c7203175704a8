"""One process, or tunekit relaunched under torchrun / accelerate launch (never a home-made launcher).

`tunekit train` validates the recipe, and when the launch section asks for more than one process (or
for DeepSpeed / FSDP, which need a distributed environment), it re-executes itself as

    python -m torch.distributed.run --nproc-per-node N ... -m tunekit train RECIPE OVERRIDES...

with the same interpreter and PYTHONPATH, and exits with the launcher's exit code. A process that is
already under torchrun or accelerate (LOCAL_RANK / WORLD_SIZE / TORCHELASTIC_RUN_ID / ACCELERATE_* in
the environment) is never relaunched: it trains as one rank of that run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LAUNCHER_ENV = ("LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")
# CLI flag -> recipe field they override (flags are sugar for `launch.X=VALUE` overrides).
FLAG_FIELDS = {"nproc": "nproc", "nnodes": "nnodes", "node_rank": "node_rank", "master_addr": "master_addr",
               "master_port": "master_port", "strategy": "strategy"}


def under_launcher() -> bool:
    return any(k in os.environ for k in LAUNCHER_ENV)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def strategy(recipe: Any) -> str:
    """The strategy this process runs. Under a launcher the environment's world size counts: `auto` with
    several processes is DDP, also when the user started them with their own `torchrun -m tunekit ...`
    (the recipe then says nproc 1)."""
    s = recipe.launch.resolved_strategy
    if s == "single" and world_size() > 1:
        if recipe.launch.strategy == "single":
            from tunekit.errors import UserError

            raise UserError(f"launch.strategy single, but this process is one of {world_size()} started by a "
                            "launcher (WORLD_SIZE). Set launch.strategy: auto, ddp, deepspeed or fsdp, or start "
                            "one process.")
        return "ddp"
    return s


def rank_prefix() -> str:
    """`rank 1/2: ` inside a multi-process run, so an error names the rank that raised it."""
    return f"rank {rank()}/{world_size()}: " if world_size() > 1 else ""


def flag_overrides(**flags: Any) -> list[str]:
    """`--nproc 2 --nnodes 1` -> [`launch.nproc=2`, `launch.nnodes=1`] (unset flags are skipped)."""
    return [f"launch.{FLAG_FIELDS[k]}={v}" for k, v in flags.items() if v is not None]


def needs_relaunch(recipe: Any) -> bool:
    if under_launcher():
        return False
    return recipe.launch.world_size > 1 or recipe.launch.resolved_strategy in ("deepspeed", "fsdp")


FSDP_OFFLOAD_ON_CPU = (
    "launch.fsdp.cpu_offload: true needs a GPU: offloading moves parameters from accelerator memory to CPU "
    "memory (pinned, which torch can only allocate with an accelerator present), and on this CPU-only machine "
    "they already live on the CPU. Instead: set launch.fsdp.cpu_offload: false (activation checkpointing "
    "still works), or run on a GPU machine."
)


def check_runnable(recipe: Any) -> None:
    """Machine-dependent checks made before any worker starts (validate stays machine-independent)."""
    from tunekit.errors import UserError

    if recipe.launch.launcher == "accelerate" and recipe.launch.world_size > 1:
        import torch

        if not torch.cuda.is_available():
            raise UserError("launch.launcher accelerate: on a machine without GPUs `accelerate launch --cpu` starts "
                            "several processes only through MPI (mpirun), and otherwise runs one process with no "
                            "process group. Instead: use launch.launcher: torchrun (the default) on CPU.")
    if recipe.launch.resolved_strategy == "fsdp":
        import torch

        from tunekit.launch_backends import fsdp_config

        if fsdp_config(recipe.launch.fsdp).get("cpu_offload") and not torch.cuda.is_available():
            raise UserError(FSDP_OFFLOAD_ON_CPU)


def checkpoint_world_size(checkpoint: Path) -> int:
    """Processes that wrote an HF Trainer checkpoint (one rng_state_R.pth per rank, rng_state.pth if one)."""
    return len(list(checkpoint.glob("rng_state_*.pth"))) or 1


def check_resume(recipe: Any, checkpoint: Path, world: int) -> None:
    """DeepSpeed ZeRO partitions optimizer state per rank; resuming needs the same number of processes.
    DDP checkpoints hold full state and resume with any number of processes."""
    from tunekit.errors import UserError

    saved = checkpoint_world_size(checkpoint)
    zero = any(checkpoint.glob("global_step*"))
    if zero and saved != world:
        raise UserError(
            f"--resume: {checkpoint} is a DeepSpeed ZeRO checkpoint written by {saved} processes, but this run "
            f"has {world}. ZeRO shards optimizer state per rank, so resume with --nproc/--nnodes giving {saved} "
            f"processes in total; or start a new run from consolidated weights ({checkpoint}/zero_to_fp32.py).")


def launcher_command(recipe: Any, worker_args: list[str]) -> list[str]:
    """The launcher command line; `worker_args` follow `-m tunekit` (e.g. train RECIPE overrides...)."""
    ln = recipe.launch
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


def worker_env() -> dict[str, str]:
    """The parent's environment plus a PYTHONPATH that makes workers import this very tunekit."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([here, *[p for p in parts if p != here]])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def relaunch(recipe: Any, worker_args: list[str]) -> int:
    """Run the launcher, stream its output, and return its exit code. A failing rank ends the whole run:
    torchrun stops the other ranks and prints the failing rank, its exit code and error."""
    from tunekit.ui import console

    cmd = launcher_command(recipe, worker_args)
    ln = recipe.launch
    console.print(f"launch: {ln.resolved_strategy} with {ln.nproc} process(es) x {ln.nnodes} node(s) "
                  f"via {ln.launcher}: {' '.join(cmd)}")
    try:
        proc = subprocess.run(cmd, env=worker_env())
    except KeyboardInterrupt:
        return 130
    if proc.returncode != 0:
        console.print(f"[red]error:[/] the {ln.world_size}-process run failed (exit code {proc.returncode}); "
                      "the failing rank and its error are printed above (`rank N/W: error: ...` and the "
                      "launcher's `Root Cause` summary).")
    return proc.returncode


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Preprocess data on local rank 0 first while the other ranks wait; they then read its cache.

    The process group is created here (the one accelerate/DeepSpeed/transformers then reuse), with the
    recipe's timeout, so waiting ranks are bounded by `launch.timeout_minutes` and never hang forever.
    """
    if world_size() <= 1:
        yield
        return
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if local_rank == 0:
            dist.barrier()


def init_process_group(recipe: Any) -> None:
    """Initialise torch.distributed with the recipe's backend and timeout (no-op in one plain process;
    DeepSpeed and FSDP get a process group even when the launcher started a single one)."""
    if world_size() <= 1 and not (under_launcher() and strategy(recipe) in ("deepspeed", "fsdp")):
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from tunekit.launch_backends import backend

    if dist.is_initialized():
        return
    name = backend(recipe.launch)
    timeout = timedelta(minutes=recipe.launch.timeout_minutes)
    if strategy(recipe) == "deepspeed" and name == "gloo":
        # accelerate picks a DeepSpeed backend only for accelerator devices; on CPU it would fall back to
        # one process. Configure its state for DeepSpeed over gloo here; TrainingArguments then reuses it
        # (`accelerator_config.use_configured_state`, see launch_backends.training_kwargs).
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend=name, timeout=timeout)
        return
    if strategy(recipe) == "fsdp" and name == "gloo":
        # accelerate 1.x switches a run to FSDP only when its process state is a multi-accelerator type
        # (MULTI_GPU, MULTI_XPU, ...); a MULTI_CPU state would silently drop the FSDP plugin and train plain
        # DDP. torch's fully_shard itself runs over gloo, so configure the CPU state here and present it as
        # multi-device for that one decision: the Trainer's Accelerator then records it as FSDP (checked
        # after the trainer is built, `check_engine`). TrainingArguments reuses this state (`use_configured_state`).
        from accelerate import PartialState
        from accelerate.utils import DistributedType

        PartialState(cpu=True, backend=name, timeout=timeout)
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
        return
    if name == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=name, timeout=timeout)


# The accelerate distributed type each strategy must end up as; anything else means the engine was dropped.
ENGINES = {"single": ("NO",), "ddp": ("MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU"),
           "deepspeed": ("DEEPSPEED",), "fsdp": ("FSDP",)}


def engine(trainer: Any) -> str:
    """The engine accelerate actually set up for this trainer (`FSDP`, `DEEPSPEED`, `MULTI_CPU`, `NO`, ...)."""
    return str(trainer.accelerator.distributed_type).split(".")[-1]


def check_engine(recipe: Any, trainer: Any) -> str:
    """Refuse to train when accelerate set up another engine than the recipe asked for (e.g. FSDP silently
    dropped for plain DDP): a run must never look sharded when it is not. Returns the engine's name."""
    from tunekit.errors import UserError

    got = engine(trainer)
    want = strategy(recipe) if world_size() > 1 or under_launcher() else "single"
    if got not in ENGINES[want]:
        raise UserError(f"launch.strategy {want}: accelerate set up {got} instead of "
                        f"{' or '.join(ENGINES[want])}; refusing to train with another engine than the recipe "
                        "asks for. Run `tunekit train --debug` and report the accelerate/transformers versions.")
    return got


def consolidate_saves(trainer: Any) -> None:
    """Make every Hugging Face save of an FSDP run complete, at checkpoints and at the end.

    FSDP's activation checkpointing wraps each decoder layer in a checkpoint wrapper. The state dict hides the
    wrapper (`_checkpoint_wrapped_module.` is stripped from its keys), but peft picks the adapter's entries by
    module name, where the wrapper is still present: it would match nothing and save an *empty* adapter. So each
    save runs with the wrapped layers put back in their place, and the wrappers restored afterwards for the
    training that follows. Every rank calls save_model (FSDP gathers the shards there)."""
    if getattr(trainer.accelerator.state, "fsdp_plugin", None) is None:
        return
    save_model = trainer.save_model

    def save_without_wrappers(*args: Any, **kwargs: Any) -> None:
        with _activation_checkpoint_wrappers_removed(trainer.model):
            save_model(*args, **kwargs)

    trainer.save_model = save_without_wrappers


def save_consolidated(trainer: Any, path: str) -> None:
    """Save full Hugging Face weights (or the full adapter) that load in one process. Every rank calls this:
    ZeRO-3 and FSDP gather the shards here. An FSDP run whose checkpoints use SHARDED_STATE_DICT (resumable
    with any process count through torch.distributed.checkpoint) still gets consolidated final weights:
    transformers' save_model would otherwise write none for a sharded state dict."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is not None:  # the run's last save: checkpoints are written by now
        plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(path)


@contextlib.contextmanager
def _activation_checkpoint_wrappers_removed(model: Any) -> Iterator[None]:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

    wrappers = [(name, m) for name, m in model.named_modules() if isinstance(m, ActivationWrapper)]
    for name, wrapper in wrappers:
        model.set_submodule(name, wrapper._checkpoint_wrapped_module)
    try:
        yield
    finally:
        for name, wrapper in wrappers:
            model.set_submodule(name, wrapper)


def shutdown() -> None:
    """End a distributed run cleanly: wait for every rank, then destroy the process group.

    Without this, gloo's worker threads can still be alive at interpreter exit and abort the process
    ("terminate called without an active exception"), turning a finished run into a failed one.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def scale_summary(recipe: Any) -> dict:
    t = recipe.trainer
    ws = world_size()
    return {"strategy": strategy(recipe) if ws > 1 or under_launcher() else "single",
            "world_size": ws, "per_device_batch_size": t.per_device_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "global_batch_size": t.per_device_batch_size * t.gradient_accumulation_steps * ws}
