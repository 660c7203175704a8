"""The RL stage of a `reft` run: what it holds beyond its warm-up, planned as a stage of its own.

The warm-up is planned as the SFT run it is. The RL stage trains the same model and method (the warm-up's weights or
adapter, the same parameter table) with `trainer.rl`'s optimizer and batch settings, and also holds:

- the KL reference (`rl.beta > 0` only; none at beta 0): for an adapter a frozen copy named "ref" of every
  parameter of the trained adapter (TRL's GRPOTrainer/RLOOTrainer and tunekit's PPO add it the same way), for other
  methods a second copy of the model (TRL loads one; tunekit's PPO deep-copies the policy), counted as the weights;
- PPO's value head (`rl.algorithm: ppo`): a float32 Linear(hidden, 1) with its gradient and optimizer state;
- generation: the KV cache of the sequences sampled at once, 2 x layers x kv_heads x head_dim x (prompt +
  max_completion_length) elements each, in the model's dtype. At once: GRPO/RLOO sample one generation batch,
  per_device_batch_size x gradient_accumulation_steps completions; PPO one rollout, per_device_batch_size x
  gradient_accumulation_steps x ppo.num_mini_batches. Sampling runs between optimizer steps, when the gradients
  (set to None by the optimizer's zero_grad) and the step's activations are gone, so the cache counts only where it
  exceeds the training step's transient memory (activations, logits, gradients);
- the training micro-batch: per_device_batch_size sequences of prompt + max_completion_length tokens (the prompt
  bounded by data.max_length, or by the data plan's longest row).
The step's activations and LM-head buffers are the SFT terms on that micro-batch: TRL's fused LM head for GRPO/RLOO
(as TRL scores them), full logits for PPO (an upper bound: tunekit's PPO keeps the completion positions' logits). reft runs are single-process, so nothing is sharded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunekit.plan import optimizers
from tunekit.plan.activations import Shape
from tunekit.plan.estimate import Estimate, estimate
from tunekit.plan.params import DTYPE_BYTES, Param, ParamTable, model_dtype, weight_bytes

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def rl_recipe(recipe: Recipe) -> Recipe:
    """The recipe as the RL stage sees it: `trainer:` is `trainer.rl` (optimizer, batch, checkpointing)."""
    return recipe.model_copy(update={"trainer": recipe.trainer.rl})


def is_adapter(table: ParamTable) -> bool:
    return any(p.name.startswith("base_model.model.") for p in table.params)


def reference_bytes(recipe: Recipe, table: ParamTable) -> int:
    """The KL reference the RL stage keeps (see the module doc); 0 at beta 0."""
    if recipe.trainer.rl.beta == 0:
        return 0
    if is_adapter(table):
        return sum(p.numel * p.element_bytes for p in table.params if ".default." in p.name)
    return weight_bytes(table, recipe)


def value_head_params(hidden: int) -> list[Param]:
    return [Param("value_head.weight", (1, hidden), 4, True), Param("value_head.bias", (1,), 4, True)]


def value_head_bytes(recipe: Recipe, shape: Shape) -> dict[str, int]:
    """PPO's value head: weights, gradients and optimizer state (float32); zeros for grpo/rloo."""
    if recipe.trainer.rl.algorithm != "ppo":
        return {"weights": 0, "gradients": 0, "optimizer": 0}
    params = value_head_params(shape.hidden)
    size = sum(p.numel * p.element_bytes for p in params)
    return {"weights": size, "gradients": size, "optimizer": optimizers.state_bytes(recipe.trainer.rl.optim, params)}


def sampled_at_once(recipe: Recipe) -> int:
    rl = recipe.trainer.rl
    per_step = rl.per_device_batch_size * rl.gradient_accumulation_steps
    return per_step * rl.ppo.num_mini_batches if rl.algorithm == "ppo" and rl.ppo else per_step


def kv_cache_bytes(recipe: Recipe, shape: Shape, prompt: int, device: str) -> int:
    tokens = prompt + recipe.trainer.rl.max_completion_length
    per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim
    return sampled_at_once(recipe) * tokens * per_token * DTYPE_BYTES[model_dtype(recipe.model.dtype, device)]


def estimate_rl(recipe: Recipe, table: ParamTable, device: str = "cuda", seq: int | None = None) -> Estimate:
    """Bytes per device of the RL stage of the reft `recipe`; `seq` bounds the prompt (default data.max_length)."""
    prompt = seq or recipe.data.max_length
    est = estimate(rl_recipe(recipe), table, device, prompt + recipe.trainer.rl.max_completion_length)
    step = sum(est.gpu.get(k, 0) for k in ("activations", "logits", "overlap", "gradients"))
    head = value_head_bytes(recipe, est.shape)
    kv = kv_cache_bytes(recipe, est.shape, prompt, device)
    gpu = dict(est.gpu)
    runtime = gpu.pop("runtime")
    gpu.update(reference=reference_bytes(recipe, table), value_head=sum(head.values()),
               generation=max(0, kv - step), runtime=runtime)
    rl = recipe.trainer.rl
    notes = [*est.notes, f"RL stage: {sampled_at_once(recipe)} sequences of up to {prompt} + "
             f"{rl.max_completion_length} tokens sampled at once: KV cache {kv:,} bytes"]
    return Estimate(gpu, est.cpu, est.layout, est.micro, est.shape, est.params, notes)
