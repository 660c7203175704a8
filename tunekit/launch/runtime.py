"""This process's place in a run: rank, world size, the strategy it runs, and the process group.

A process that is under torchrun or accelerate (LOCAL_RANK / WORLD_SIZE / TORCHELASTIC_RUN_ID / ACCELERATE_*
in the environment) trains as one rank of that run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from tunekit.errors import UserError

if TYPE_CHECKING:
    from tunekit.launch.schema import LaunchConfig
    from tunekit.trainers.schema import TrainerConfig

LAUNCHER_ENV = ("LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")


def under_launcher() -> bool:
    return any(k in os.environ for k in LAUNCHER_ENV)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def rank_prefix() -> str:
    """`rank 1/2: ` inside a multi-process run, so an error names the rank that raised it."""
    return f"rank {rank()}/{world_size()}: " if world_size() > 1 else ""


def strategy(launch: LaunchConfig) -> str:
    """The strategy this process runs. Under a launcher the environment's world size counts: `auto` with
    several processes is DDP, also when the user started them with their own `torchrun -m tunekit ...`
    (the recipe then says nproc 1)."""
    s = launch.resolved_strategy
    if s == "single" and world_size() > 1:
        if launch.strategy == "single":
            raise UserError(f"launch.strategy single, but this process is one of {world_size()} started by a "
                            "launcher (WORLD_SIZE). Set launch.strategy: auto, ddp, deepspeed or fsdp, or start "
                            "one process.")
        return "ddp"
    return s


def run_strategy(launch: LaunchConfig) -> str:
    """The strategy recorded for this run: `single` for one plain process."""
    return strategy(launch) if world_size() > 1 or under_launcher() else "single"


def backend(launch: LaunchConfig) -> str:
    if launch.backend != "auto":
        return launch.backend
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Preprocess data on local rank 0 first while the other ranks wait; they then read its cache.

    The process group is created before (`init_process_group`, the one accelerate/DeepSpeed/transformers then
    reuse), with the recipe's timeout, so waiting ranks are bounded by `launch.timeout_minutes`.
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


def init_process_group(launch: LaunchConfig) -> None:
    """Initialise torch.distributed with the recipe's backend and timeout (no-op in one plain process;
    DeepSpeed and FSDP get a process group even when the launcher started a single one)."""
    if world_size() <= 1 and not (under_launcher() and strategy(launch) in ("deepspeed", "fsdp")):
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    name = backend(launch)
    timeout = timedelta(minutes=launch.timeout_minutes)
    if strategy(launch) in ("deepspeed", "fsdp") and name == "gloo":
        _configure_cpu_engine_state(strategy(launch), name, timeout)
        return
    if name == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=name, timeout=timeout)


def _configure_cpu_engine_state(engine: str, name: str, timeout: timedelta) -> None:
    """accelerate's process state for DeepSpeed or FSDP over gloo; TrainingArguments reuses it
    (`accelerator_config.use_configured_state`, see engines.training_kwargs)."""
    from accelerate import PartialState

    if engine == "deepspeed":
        # accelerate picks a DeepSpeed backend only for accelerator devices; on CPU it would fall back to
        # one process. Configure its state for DeepSpeed over gloo here.
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend=name, timeout=timeout)
        return
    # accelerate 1.x switches a run to FSDP only when its process state is a multi-accelerator type
    # (MULTI_GPU, MULTI_XPU, ...); a MULTI_CPU state would silently drop the FSDP plugin and train plain
    # DDP. torch's fully_shard itself runs over gloo, so configure the CPU state here and present it as
    # multi-device for that one decision: the Trainer's Accelerator then records it as FSDP (checked
    # after the trainer is built, `engines.check_engine`).
    from accelerate.utils import DistributedType

    PartialState(cpu=True, backend=name, timeout=timeout)
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def barrier() -> None:
    """Wait for every process of a multi-process run (nothing in one process)."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """End a distributed run cleanly: wait for every rank, then destroy the process group.

    Without this, gloo's worker threads can still be alive at interpreter exit and abort the process
    ("terminate called without an active exception"), turning a finished run into a failed one.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def scale_summary(launch: LaunchConfig, trainer: TrainerConfig) -> dict:
    ws = world_size()
    return {"strategy": run_strategy(launch), "world_size": ws, "per_device_batch_size": trainer.per_device_batch_size,
            "gradient_accumulation_steps": trainer.gradient_accumulation_steps,
            "global_batch_size": trainer.per_device_batch_size * trainer.gradient_accumulation_steps * ws}
