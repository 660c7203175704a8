"""MeZO (Malladi et al. 2023, seed 000): zeroth-order SGD with in-place, seeded perturbations.

Each step draws a seed s and, for the trainable parameters θ (all of them for `full`, the adapter for LoRA):

    θ += ε z;  L+ = loss(θ)      (z ~ N(0, I), regenerated from s parameter by parameter, never stored)
    θ -= 2ε z; L- = loss(θ)
    θ += ε z                     (back to θ)
    θ -= lr · (L+ - L-) / (2ε) · z

Only forward passes run, with no autograd graph, so memory is that of inference (plus one parameter-sized z at a
time). The seed of step t is a function of (trainer.seed, t), so a resumed run draws the same directions.

Why a Trainer subclass: the update is not a gradient step, and transformers has no hook between a batch and the
optimizer other than `training_step`; the subclass overrides only that. The Trainer still builds a plain SGD
optimizer (it never receives gradients, so its step changes nothing) and the scheduler whose learning rate MeZO
reads each step.
"""

from __future__ import annotations

from typing import Any


def perturb(params: list[Any], seed: int, scale: float) -> None:
    """θ += scale · z(seed), z regenerated in the same order every time."""
    import torch

    gen = None
    for p in params:
        if gen is None or gen.device != p.device:
            gen = torch.Generator(device=p.device).manual_seed(seed)
        z = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
        p.data.add_(z, alpha=scale)


def step_seed(base_seed: int, step: int) -> int:
    return (base_seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


def trainer_class(base: type, eps: float) -> type:
    """`base` (TRL's SFTTrainer) with MeZO's training_step."""
    import torch

    class MezoTrainer(base):  # type: ignore[misc, valid-type]
        def training_step(self, model: Any, inputs: dict, num_items_in_batch: Any = None) -> Any:
            params = [p for p in model.parameters() if p.requires_grad]
            inputs = self._prepare_inputs(inputs)
            seed = step_seed(self.args.seed, self.state.global_step)
            lr = self._get_learning_rate()
            model.eval()  # both evaluations must see the same function (no dropout), as MeZO's code does
            with torch.no_grad():
                perturb(params, seed, eps)
                plus = model(**inputs).loss.float()
                perturb(params, seed, -2 * eps)
                minus = model(**inputs).loss.float()
                perturb(params, seed, eps)
                projected = float(plus - minus) / (2 * eps)
                perturb(params, seed, -lr * projected)  # θ -= lr · g · z
            model.train()
            return ((plus + minus) / 2).detach()

    return MezoTrainer
