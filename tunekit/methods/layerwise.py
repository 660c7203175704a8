"""LISA and HFT: full-weight methods that train a changing (LISA) or fixed (HFT) subset of the model.

LISA (Pan et al. 2024): every `interval` (K) steps a random set of `layers` (gamma) decoder layers trains and
the others are frozen; embeddings and head always train. The set for period p = step // K is a pure function
of (seed, p), so a resumed run trains the same layers. Every parameter is in the optimizer from the start
(the Trainer builds it from `requires_grad`), frozen parameters get no gradient, so torch's AdamW skips them;
when the set changes, the optimizer state (Adam moments) of the layers that become frozen is dropped, as a
freshly built optimizer would (the memory saving LISA is for), and a re-activated layer starts fresh.

HFT (Hui et al. 2024): within every decoder layer, a seeded random half of the attention matrices and half of
the MLP matrices are frozen (odd counts alternate rounding up/down by layer). Norms train by default,
embeddings and head are frozen. `stage` changes the draw, so stage 2 freezes a different half.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

from tunekit.methods.full import decoder_layers, layer_prefix
from tunekit.methods.plan import MethodPlan

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def lisa_layers(n_layers: int, gamma: int, seed: int, period: int) -> list[int]:
    """The decoder layers that train during schedule period `period` (sorted)."""
    return sorted(random.Random(f"lisa-{seed}-{period}").sample(range(n_layers), min(gamma, n_layers)))


def build_lisa(model: Any, cfg: Any, recipe: Recipe) -> Any:
    # Every parameter starts trainable so the Trainer puts it in the optimizer; the schedule then freezes layers.
    for p in model.parameters():
        p.requires_grad_(True)
    for module, on in ((model.get_input_embeddings(), cfg.train_embeddings),
                       (model.get_output_embeddings(), cfg.train_head)):
        for p in module.parameters() if module is not None else ():
            p.requires_grad_(on)
    seed = recipe.trainer.seed if cfg.seed is None else cfg.seed
    return MethodPlan(model=model, callbacks=[lisa_callback(model, cfg, seed)], params=lisa_counts(model, cfg))


def lisa_counts(model: Any, cfg: Any) -> dict:
    """Counts at any one step: the parameters outside the layers that train, plus `layers` decoder layers."""
    layers = decoder_layers(model)
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    total = sum(p.numel() for p in model.parameters())
    outside = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in in_layers)
    per_layer = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
    trainable = outside + min(cfg.layers, len(layers)) * per_layer
    return {"trainable": trainable, "total": total, "trainable_percent": round(100.0 * trainable / max(total, 1), 4)}


def lisa_callback(model: Any, cfg: Any, seed: int) -> Any:
    from transformers import TrainerCallback

    layer_params = [list(layer.parameters()) for layer in decoder_layers(model)]

    class LisaSchedule(TrainerCallback):
        """Switches the trainable decoder layers every K steps (see the module docstring)."""

        def __init__(self) -> None:
            self.period: int | None = None
            self.history: list[tuple[int, list[int]]] = []  # (step, active layers) at each switch

        def on_step_begin(self, args, state, control, optimizer=None, **kw):  # noqa: ANN001
            period = state.global_step // cfg.interval
            if period == self.period:
                return
            self.period = period
            active = lisa_layers(len(layer_params), cfg.layers, seed, period)
            self.history.append((state.global_step, active))
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
            for i, params in enumerate(layer_params):
                for p in params:
                    p.requires_grad_(i in active)
                    if i not in active:
                        p.grad = None
                        if inner is not None:
                            inner.state.pop(p, None)

    return LisaSchedule()


def hft_frozen(names: list[str], n_layers_prefixes: list[str], seed: int, stage: int) -> set[str]:
    """Names of the weight matrices HFT freezes: half of each layer's attention and half of its MLP matrices."""
    frozen: set[str] = set()
    rng = random.Random(f"hft-{seed}-{stage}")
    for li, prefix in enumerate(n_layers_prefixes):
        mats = [n for n in names if n.startswith(prefix) and n.endswith(".weight") and "norm" not in n]
        for group in ("attn", "mlp"):
            members = sorted(n for n in mats if re.search(rf"\.{'self_attn|attn|attention' if group == 'attn' else 'mlp|feed_forward'}\.", n))
            k = len(members) // 2 + (len(members) % 2 if li % 2 else 0)
            frozen |= set(rng.sample(members, k))
    return frozen


def build_hft(model: Any, cfg: Any, recipe: Recipe) -> Any:
    seed = recipe.trainer.seed if cfg.seed is None else cfg.seed
    prefixes = [layer_prefix(model, i) for i in range(len(decoder_layers(model)))]
    names = [n for n, _ in model.named_parameters()]
    frozen = hft_frozen(names, prefixes, seed, cfg.stage)
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    head_mod = model.get_output_embeddings()
    head = {id(p) for p in head_mod.parameters()} if head_mod is not None else set()
    for n, p in model.named_parameters():
        if id(p) in emb:
            train = cfg.train_embeddings
        elif id(p) in head:
            train = cfg.train_head
        elif "norm" in n:
            train = cfg.train_norms
        else:
            train = n not in frozen
        p.requires_grad_(train)
    return model
