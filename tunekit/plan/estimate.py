"""Memory per device for a recipe: the exact parts (params.py, optimizers.py), the activations
(activations.py), divided by the launch strategy (sharding.py), against a GPU (hardware.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunekit.plan import optimizers
from tunekit.plan.activations import Micro, Shape, activation_bytes, head_bytes, step_peak
from tunekit.plan.hardware import Gpu
from tunekit.plan.params import DTYPE_BYTES, Param, ParamTable, gradient_bytes, model_dtype, weight_bytes
from tunekit.plan.sharding import Layout, divide, layout

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

GIB = 1024**3
RUNTIME_BYTES = GIB  # CUDA context, cuBLAS/NCCL workspaces: about 1 GiB per process on current GPUs
TIGHT = 0.10  # under 10% headroom the allocator's fragmentation can tip a run over
# How each trainer kind scores the vocabulary (TRL 1.16): SFT, DPO, KTO and reft's GRPO/RLOO stage through TRL's
# fused LM head (tiles, the logits never materialised); ORPO, CPO and online DPO (trl.experimental) and tunekit's
# PPO from the model's logits. DPO, ORPO and CPO run chosen and rejected in one forward: 2 x per_device_batch_size
# rows.
LOGITS_KINDS = ("orpo", "cpo", "online_dpo", "ppo")
PAIRED_KINDS = ("dpo", "orpo", "cpo")


def trainer_kind(t: object) -> str:
    """The trainer kind of `trainer:` settings; reft's RL stage (`trainer.rl`) by its algorithm."""
    return getattr(t, "kind", None) or getattr(t, "algorithm", "sft")


@dataclass
class Estimate:
    gpu: dict[str, int]  # bytes per device by part (overlap <= 0: gradients made as activations are freed)
    cpu: dict[str, int]  # bytes per process moved to the CPU by offload
    layout: Layout
    micro: Micro
    shape: Shape
    params: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.gpu.values())


def optimizer_of(recipe: Recipe) -> tuple[str, tuple[int, tuple[str, ...]] | None]:
    m = recipe.method
    if m.name == "galore":
        return m.optimizer, (m.rank, tuple(m.target_modules))
    return recipe.trainer.optim, None


def adapter_elements(table: ParamTable, shape: Shape, recipe: Recipe) -> int:
    """Extra activation elements per token per layer the method's modules keep."""
    if recipe.method.name in ("loreft",):
        r = recipe.method.rank
        n_layers = shape.layers if recipe.method.layers == "all" else len(recipe.method.layers)
        return (2 * r + shape.hidden) * n_layers // max(shape.layers, 1)
    ranks = sum(p.shape[0] for p in table.params if ".lora_A." in p.name and len(p.shape) == 2)
    return ranks // max(shape.layers, 1)


def head_trains(table: ParamTable, shape: Shape) -> bool:
    """Whether the output head's weight gets a gradient (lm_head trained, or tied to a trained embedding)."""
    head = ("lm_head", "embed_tokens") if shape.tied else ("lm_head",)
    return any(any(h in p.name for h in head) and len(p.shape) == 2 for p in table.trainable)


def _optimizer_bytes(recipe: Recipe, table: ParamTable, lay: Layout) -> int:
    optim, galore = optimizer_of(recipe)
    trainable = table.trainable
    master = 0
    if lay.strategy == "deepspeed":  # float32 master weights and float32 states for 16-bit parameters
        master = sum(4 * p.numel for p in trainable if p.element_bytes < 4)
        trainable = [Param(p.name, p.shape, 4, True) for p in trainable]
    return optimizers.state_bytes(optim, trainable, galore) + master


def _largest_layer(table: ParamTable, weights: int) -> int:
    per: dict[str, int] = {}
    for p in table.params:
        parts = p.name.split(".layers.")
        if len(parts) == 2:
            key = parts[1].split(".")[0]
            per[key] = per.get(key, 0) + p.numel * p.element_bytes
    return max(per.values(), default=weights)


def estimate(recipe: Recipe, table: ParamTable, device: str = "cuda", seq: int | None = None) -> Estimate:
    """Bytes per device when `recipe` trains on `device` (cuda | cpu) with micro-batches of `seq` tokens
    (default: data.max_length)."""
    shape = Shape.of(table.config)
    t, lay = recipe.trainer, layout(recipe.launch)
    weights, grads = weight_bytes(table, recipe), gradient_bytes(table)
    whole = {"weights": weights, "gradients": grads, "optimizer": _optimizer_bytes(recipe, table, lay)}
    gpu, cpu = divide(whole, lay, _largest_layer(table, weights))
    checkpointing = t.gradient_checkpointing or (lay.strategy == "fsdp" and bool(
        recipe.launch.fsdp.activation_checkpointing))
    kind = trainer_kind(t)
    micro = Micro(t.per_device_batch_size * (2 if kind in PAIRED_KINDS else 1), seq or recipe.data.max_length,
                  DTYPE_BYTES[model_dtype(recipe.model.dtype, device)], recipe.model.attn_implementation,
                  checkpointing, adapter_elements(table, shape, recipe),
                  any(p.trainable and "norm" in p.name for p in table.params), kind not in LOGITS_KINDS,
                  head_trains(table, shape), device != "cuda")
    embedding = sum(p.numel * p.element_bytes for p in table.trainable if "embed_tokens" in p.name)
    gpu["activations"], gpu["logits"] = activation_bytes(shape, micro), head_bytes(shape, micro)
    peak = step_peak(shape, micro, gpu["gradients"], embedding)
    gpu["overlap"] = peak - gpu["activations"] - gpu["logits"] - gpu["gradients"]
    gpu["runtime"] = RUNTIME_BYTES if device == "cuda" else 0
    params = {"total": table.count(), "trainable": table.count(trainable_only=True)}
    notes = [] if optimizers.is_known(optimizer_of(recipe)[0]) else [
        f"optimizer `{optimizer_of(recipe)[0]}` is not in the planner's table: planned as AdamW"]
    if optimizers.is_paged(optimizer_of(recipe)[0]):
        notes.append("paged optimizer: its state can be evicted to CPU memory under pressure")
    return Estimate(gpu, cpu, lay, micro, shape, params, notes)


def verdict(est: Estimate, gpu: Gpu) -> dict:
    memory = int(gpu.memory_gib * GIB)
    headroom = memory - est.total
    word = "does not fit" if headroom < 0 else ("tight" if headroom < TIGHT * memory else "fits")
    return {"gpu": gpu.name, "memory_bytes": memory, "peak_bytes": est.total, "headroom_bytes": headroom,
            "headroom_percent": round(100 * headroom / memory, 1), "verdict": word}
