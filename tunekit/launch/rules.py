"""Which training methods and options combine with which launch strategies: one table, checked at validate time.

Each rule is plain data. `when` maps a fact name to the values that trigger the rule (every listed fact
must match); `unless` maps a fact to values that excuse it. Facts are computed from the recipe by
`facts()`, so rules keyed by method names that are not installed yet simply never match. The table is
rendered into docs/scaling.md by `render_markdown()` (a test keeps the two identical).

`check_runnable` and `check_resume` are the machine-dependent checks made before any worker starts
(validate stays machine-independent).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import UserError
from tunekit.launch.engines import deepspeed_config, fsdp_config

if TYPE_CHECKING:
    from tunekit.launch.schema import LaunchConfig
    from tunekit.recipe.schema import Recipe

SHARDED = ("zero3", "fsdp")  # strategies that shard the parameters themselves
PROMPT_LEARNING = ("prefix_tuning", "prompt_tuning", "p_tuning")
REPRESENTATION = ("reft", "loreft", "lofit", "red", "bottleneck")
# Optimizers DeepSpeed / FSDP CPU offload can step on CPU (DeepSpeedCPUAdam or torch's AdamW on CPU tensors).
OFFLOADABLE_OPTIMS = ("auto", "adamw_torch", "adamw_hf", "adamw_torch_fused", "adamw_torch_4bit", "adamw_torch_8bit",
                      "adagrad", "sgd")

RULES: list[dict[str, Any]] = [
    {
        "id": "qlora-sharded-storage",
        "when": {"method": ("qlora",), "sharding": SHARDED},
        "unless": {"quant_storage_set": (True,)},
        "why": "ZeRO-3 and FSDP shard flat tensors of one dtype; 4-bit weights packed as uint8 cannot be "
               "sharded next to bfloat16 ones unless bitsandbytes stores them in that dtype.",
        "instead": "set method.quant_storage: auto (bitsandbytes' `bnb_4bit_quant_storage` = model.dtype, "
                   "e.g. bfloat16), or use launch.strategy: ddp or deepspeed stage 1/2.",
    },
    {
        "id": "prompt-learning-sharded",
        "when": {"method": PROMPT_LEARNING, "sharding": SHARDED},
        "why": "peft prompt-learning methods build virtual-token embeddings (and, for prefix tuning, a "
               "past_key_values cache) outside the decoder layers, and read base weights that ZeRO-3/FSDP "
               "have sharded away, so they cannot shard.",
        "instead": "use launch.strategy: ddp, or deepspeed with stage 1 or 2 (the trainable part is tiny).",
    },
    {
        "id": "representation-sharded",
        "when": {"method": REPRESENTATION, "sharding": SHARDED},
        "why": "representation interventions and bottleneck adapters hook the hidden states of chosen layers of the unsharded model; "
               "ZeRO-3/FSDP replace those parameters and modules with sharded ones.",
        "instead": "use launch.strategy: ddp or deepspeed stage 1/2.",
    },
    {
        "id": "lisa-sharded",
        "when": {"method": ("lisa",), "strategy": ("deepspeed", "fsdp")},
        "why": "LISA changes which layers are trainable during training; DeepSpeed and FSDP fix the trainable "
               "parameter set when they build their flat parameter and optimizer groups.",
        "instead": "use launch.strategy: ddp.",
    },
    {
        "id": "offload-optimizer-kind",
        "when": {"offload": (True,)},
        "unless": {"optim": OFFLOADABLE_OPTIMS},
        "why": "CPU offload steps the optimizer on CPU (DeepSpeedCPUAdam, or torch AdamW on CPU tensors for "
               "FSDP); 8-bit/paged bitsandbytes, GaLore, LOMO and similar optimizers run only on the GPU.",
        "instead": "set trainer.optim: adamw_torch, or turn CPU offload off.",
    },
    {
        "id": "param-offload-needs-zero3",
        "when": {"strategy": ("deepspeed",), "zero_stage": (1, 2), "offload_params": (True,)},
        "why": "DeepSpeed offloads parameters only in ZeRO stage 3 (stages 1/2 keep a full copy per GPU).",
        "instead": "set launch.deepspeed.stage: 3, or keep only launch.deepspeed.offload_optimizer.",
    },
    {
        "id": "double-activation-checkpointing",
        "when": {"strategy": ("fsdp",), "fsdp_activation_checkpointing": (True,), "gradient_checkpointing": (True,)},
        "why": "trainer.gradient_checkpointing on top of FSDP's own activation checkpointing recomputes each layer "
               "twice and adds a redundant all-gather in backward.",
        "instead": "keep launch.fsdp.activation_checkpointing and set trainer.gradient_checkpointing: false.",
    },
]


def facts(recipe: Recipe) -> dict[str, Any]:
    """The recipe properties the rules look at (engine configs read with the recipe's overrides applied)."""
    launch = recipe.launch
    strategy = launch.resolved_strategy
    method = recipe.method
    optim_settings = getattr(recipe.trainer, "warmup", recipe.trainer)  # staged trainers (reft): the SFT stage
    f: dict[str, Any] = {
        "method": method.name,
        "strategy": strategy,
        "optim": optim_settings.optim,
        "gradient_checkpointing": bool(getattr(optim_settings, "gradient_checkpointing", False)),
        "quant_storage_set": getattr(method, "quant_storage", None) not in (None, "uint8"),
        "sharding": None, "zero_stage": None, "offload": False, "offload_params": False,
        "fsdp_activation_checkpointing": False,
    }
    if strategy == "deepspeed":
        ds = deepspeed_config(launch.deepspeed)
        zero = ds.get("zero_optimization", {})
        f["zero_stage"] = int(zero.get("stage", 0))
        f["offload_params"] = zero.get("offload_param", {}).get("device", "none") != "none"
        f["offload"] = f["offload_params"] or zero.get("offload_optimizer", {}).get("device", "none") != "none"
        f["sharding"] = "zero3" if f["zero_stage"] == 3 else f"zero{f['zero_stage']}"
    elif strategy == "fsdp":
        cfg = fsdp_config(launch.fsdp)
        f["sharding"] = "fsdp"
        f["offload"] = bool(cfg.get("cpu_offload"))
        f["fsdp_activation_checkpointing"] = bool(cfg.get("activation_checkpointing"))
    return f


def violations(f: dict[str, Any]) -> list[dict[str, Any]]:
    def matches(cond: dict) -> bool:
        return all(f.get(k) in v for k, v in cond.items())

    return [r for r in RULES if matches(r["when"]) and not (r.get("unless") and matches(r["unless"]))]


def check(recipe: Recipe) -> None:
    """Raise ValueError naming every broken rule, why, and what to do instead."""
    f = facts(recipe)
    found = violations(f)
    if found:
        head = f"method.name={f['method']} with launch.strategy={f['strategy']}"
        if f["zero_stage"]:
            head += f" (ZeRO stage {f['zero_stage']})"
        raise ValueError(head + " cannot work: " + " | ".join(
            f"[{r['id']}] {r['why']} Instead: {r['instead']}" for r in found))


def _cond(cond: dict) -> str:
    return ", ".join(f"{k} in {'/'.join(str(v) for v in vals)}" for k, vals in cond.items())


def render_markdown() -> str:
    lines = ["| rule | rejected when | allowed if | why | what to do instead |", "|---|---|---|---|---|"]
    for r in RULES:
        lines.append(f"| `{r['id']}` | {_cond(r['when'])} | {_cond(r.get('unless', {})) or '-'} | {r['why']} | "
                     f"{r['instead']} |")
    return "\n".join(lines) + "\n"


FSDP_OFFLOAD_ON_CPU = (
    "launch.fsdp.cpu_offload: true needs a GPU: offloading moves parameters from accelerator memory to CPU "
    "memory (pinned, which torch can only allocate with an accelerator present), and on this CPU-only machine "
    "they already live on the CPU. Instead: set launch.fsdp.cpu_offload: false (activation checkpointing "
    "still works), or run on a GPU machine."
)


def check_runnable(launch: LaunchConfig) -> None:
    """Machine-dependent checks made before any worker starts (validate stays machine-independent)."""
    if launch.launcher == "accelerate" and launch.world_size > 1:
        import torch

        if not torch.cuda.is_available():
            raise UserError("launch.launcher accelerate: on a machine without GPUs `accelerate launch --cpu` starts "
                            "several processes only through MPI (mpirun), and otherwise runs one process with no "
                            "process group. Instead: use launch.launcher: torchrun (the default) on CPU.")
    if launch.resolved_strategy == "fsdp":
        import torch

        if fsdp_config(launch.fsdp).get("cpu_offload") and not torch.cuda.is_available():
            raise UserError(FSDP_OFFLOAD_ON_CPU)


def checkpoint_world_size(checkpoint: Path) -> int:
    """Processes that wrote an HF Trainer checkpoint (one rng_state_R.pth per rank, rng_state.pth if one)."""
    return len(list(checkpoint.glob("rng_state_*.pth"))) or 1


def check_resume(checkpoint: Path, world: int) -> None:
    """DeepSpeed ZeRO partitions optimizer state per rank; resuming needs the same number of processes.
    DDP checkpoints hold full state and resume with any number of processes."""
    saved = checkpoint_world_size(checkpoint)
    zero = any(checkpoint.glob("global_step*"))
    if zero and saved != world:
        raise UserError(
            f"--resume: {checkpoint} is a DeepSpeed ZeRO checkpoint written by {saved} processes, but this run "
            f"has {world}. ZeRO shards optimizer state per rank, so resume with --nproc/--nnodes giving {saved} "
            f"processes in total; or start a new run from consolidated weights ({checkpoint}/zero_to_fp32.py).")


if __name__ == "__main__":  # print the table for docs/scaling.md
    print(render_markdown(), end="")
