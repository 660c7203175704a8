"""The `launch:` section: how many processes, on how many nodes, with which engine (DDP, DeepSpeed, FSDP2).

The same recipe runs on one CPU or many GPUs: only this section (or the `tunekit train --nproc ...`
flags, which are overrides of it) changes. Engine-specific options that are left unset come from the
shipped launcher config named in `deepspeed.config` / `fsdp.config`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunekit.recipe.base import Section


class DeepSpeedSettings(Section):
    config: str = Field(
        default="zero2",
        description="DeepSpeed JSON config: a shipped name (zero1, zero2, zero3, zero3-offload; see "
        "`configs/deepspeed/`) or a path. Batch sizes, precision, clipping and optimizer values set to "
        '"auto" are filled from the recipe, so the two never disagree.',
    )
    stage: Literal[1, 2, 3] | None = Field(
        default=None, description="ZeRO stage (1: optimizer state, 2: + gradients, 3: + parameters sharded). "
        "null keeps the config file's stage."
    )
    offload_optimizer: bool | None = Field(
        default=None, description="Keep optimizer state on CPU and step there (ZeRO-Offload). null keeps the config's."
    )
    offload_params: bool | None = Field(
        default=None, description="Keep parameters on CPU between uses (ZeRO-3 only). null keeps the config's."
    )


class FSDPSettings(Section):
    config: str = Field(
        default="fsdp2",
        description="FSDP2 config (YAML of transformers `fsdp_config` keys): a shipped name (fsdp2, fsdp2-offload; "
        "see `configs/fsdp/`) or a path.",
    )
    sharding: Literal["full_shard", "shard_grad_op"] | None = Field(
        default=None, description="full_shard: parameters resharded after forward (least memory); shard_grad_op: "
        "kept gathered until backward (less communication). null keeps the config's."
    )
    cpu_offload: bool | None = Field(
        default=None, description="Offload sharded parameters, gradients and optimizer state to CPU. null keeps the config's."
    )
    activation_checkpointing: bool | None = Field(
        default=None, description="FSDP's activation checkpointing of each wrapped decoder layer. null keeps the config's."
    )
    auto_wrap: Literal["decoder_layer", "none"] | None = Field(
        default=None, description="decoder_layer: one FSDP unit per decoder layer (class read from the model's "
        "`_no_split_modules`); none: the whole model is one unit. null keeps the config's."
    )


class LaunchConfig(Section):
    strategy: Literal["auto", "single", "ddp", "deepspeed", "fsdp"] = Field(
        default="auto",
        description="auto: one process, or DDP when more than one is asked for; single: exactly one process; "
        "ddp: PyTorch DistributedDataParallel; deepspeed: DeepSpeed ZeRO; fsdp: PyTorch FSDP2.",
    )
    nproc: int = Field(default=1, ge=1, description="Processes per node (usually one per GPU). Flag: --nproc.")
    nnodes: int = Field(default=1, ge=1, description="Number of nodes (machines). Flag: --nnodes.")
    node_rank: int = Field(default=0, ge=0, description="This node's index, 0..nnodes-1. Flag: --node-rank.")
    master_addr: str = Field(
        default="127.0.0.1", description="Address of node 0, reachable from every node. Flag: --master-addr."
    )
    master_port: int = Field(default=29500, ge=1, le=65535, description="Free TCP port on node 0. Flag: --master-port.")
    launcher: Literal["torchrun", "accelerate"] = Field(
        default="torchrun", description="Program tunekit relaunches itself under when several processes are needed."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        default="auto", description="torch.distributed backend: auto picks nccl with CUDA, gloo on CPU."
    )
    timeout_minutes: int = Field(
        default=30, ge=1, description="Collective timeout: a rank stuck longer than this ends the run with an error."
    )
    deepspeed: DeepSpeedSettings = Field(
        default_factory=DeepSpeedSettings, description="DeepSpeed ZeRO options (used when strategy is deepspeed)."
    )
    fsdp: FSDPSettings = Field(
        default_factory=FSDPSettings, description="FSDP2 options (used when strategy is fsdp)."
    )

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def resolved_strategy(self) -> str:
        if self.strategy == "auto":
            return "ddp" if self.world_size > 1 else "single"
        return self.strategy

    @model_validator(mode="after")
    def _check(self) -> LaunchConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"launch.node_rank={self.node_rank} must be below launch.nnodes={self.nnodes}")
        if self.strategy == "single" and self.world_size > 1:
            raise ValueError("launch.strategy single runs one process, but launch.nproc x nnodes = "
                             f"{self.world_size}; set launch.strategy: ddp (or auto, deepspeed, fsdp)")
        return self
