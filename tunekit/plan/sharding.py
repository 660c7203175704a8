"""How the launch strategy divides each memory part across processes, and what CPU offload moves off the GPU.

| strategy | weights | gradients | optimizer state | extra on the GPU |
|---|---|---|---|---|
| single | 1 | 1 | 1 | |
| ddp | 1 | 1 | 1 | gradient buckets (a second copy of the gradients) |
| deepspeed ZeRO-1 | 1 | 1 | 1/N | |
| deepspeed ZeRO-2 | 1 | 1/N | 1/N | |
| deepspeed ZeRO-3 | 1/N | 1/N | 1/N | two gathered decoder layers (the one computing, the one prefetched) |
| fsdp full_shard | 1/N | 1/N | 1/N | two gathered decoder layers |
| fsdp shard_grad_op | 1 (kept gathered from forward to backward) | 1/N | 1/N | |

DeepSpeed keeps a float32 master copy of 16-bit trainable weights and float32 optimizer states (counted in the
optimizer part). Offload: DeepSpeed `offload_optimizer` moves the optimizer state to CPU, `offload_params`
(ZeRO-3) the weights; FSDP `cpu_offload` moves weights, gradients and optimizer state. Offloaded bytes are
reported as CPU memory per process.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunekit.launch.engines import deepspeed_config, fsdp_config
from tunekit.launch.schema import LaunchConfig


@dataclass(frozen=True)
class Layout:
    strategy: str  # single | ddp | deepspeed | fsdp
    world: int
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    reshard: bool = True  # fsdp full_shard

    def describe(self) -> str:
        if self.strategy == "deepspeed":
            off = [p for p, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on]
            return f"deepspeed ZeRO-{self.zero_stage}" + (f" (offload {', '.join(off)})" if off else "")
        if self.strategy == "fsdp":
            return "fsdp " + ("full_shard" if self.reshard else "shard_grad_op") + (" (cpu offload)" if
                                                                                     self.offload_params else "")
        return self.strategy


def layout(launch: LaunchConfig) -> Layout:
    """The sharding the recipe's launch section (with its shipped engine config) asks for."""
    world, kind = launch.world_size, launch.resolved_strategy
    if kind == "deepspeed":
        zero = deepspeed_config(launch.deepspeed).get("zero_optimization", {})
        on = lambda key: zero.get(key, {}).get("device", "none") != "none"  # noqa: E731
        return Layout(kind, world, int(zero.get("stage", 0)), on("offload_optimizer"), on("offload_param"))
    if kind == "fsdp":
        cfg = fsdp_config(launch.fsdp)
        off = bool(cfg.get("cpu_offload"))
        return Layout(kind, world, 0, off, off, bool(cfg.get("reshard_after_forward", True)))
    return Layout(kind, world)


def divide(parts: dict[str, int], lay: Layout, layer_bytes: int) -> tuple[dict[str, int], dict[str, int]]:
    """(bytes per GPU, bytes per process on the CPU) for each part. `parts` holds whole-model weights, gradients
    and optimizer state; `layer_bytes` is the largest decoder layer's weights (gathered under ZeRO-3 / FSDP)."""
    n = lay.world
    gpu, cpu = dict(parts), {}
    sharded = {"deepspeed": {1: ("optimizer",), 2: ("optimizer", "gradients"),
                             3: ("optimizer", "gradients", "weights")}.get(lay.zero_stage, ()),
               "fsdp": ("optimizer", "gradients") + (("weights",) if lay.reshard else ())}.get(lay.strategy, ())
    for key in sharded:
        gpu[key] = -(-parts[key] // n)
    if "weights" in sharded:
        gpu["gathered_layers"] = 2 * layer_bytes
    if lay.strategy == "ddp" and n > 1:
        gpu["ddp_buckets"] = parts["gradients"]
    moved = {"deepspeed": (("optimizer",) if lay.offload_optimizer else ()) + (("weights",) if lay.offload_params
                                                                               else ()),
             "fsdp": ("weights", "gradients", "optimizer") if lay.offload_params else ()}.get(lay.strategy, ())
    for key in moved:
        cpu[key], gpu[key] = gpu[key], 0
    return gpu, cpu
