"""Representation fine-tuning: `loreft` and `lofit`, and `bottleneck` adapters (`bottleneck.py`), which are
hooked in the same way. The base model stays frozen; small intervention modules
change hidden states through hooks transformers' modules offer (forward hooks, no monkeypatching).

- LoReFT (Wu et al. 2024): at the output of chosen decoder layers and chosen positions,
  h <- h + Rᵀ(W h + b − R h), with R (r x d) kept row-orthonormal by torch's orthogonal parametrization.
  Positions: all tokens; the first N of each sequence; the last N prompt tokens before each trained span (the
  labels mark the boundary in training; at inference, the last N tokens of the prompt); or both (the paper's
  f+l). Generated tokens are never intervened on (`position_mask`).
- LoFiT (Yin et al. 2024): learned offset vectors v_h (and optionally scales) added to the outputs of chosen
  attention heads, i.e. to the input of `o_proj` split into heads. The paper picks the top ~3% heads by a first
  training pass of per-head scales: `select_heads: K` (or a fraction) does that step on the first training
  batches before training (`select_heads` below); otherwise the heads come from the recipe (default: all).

The interventions live in a submodule `tunekit_interventions` of the model, so Trainer checkpoints hold their
weights and resume restores them. final/ gets `interventions.safetensors` + `interventions.json`; `load()`
rebuilds them on a freshly loaded base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import UserError
from tunekit.methods import bottleneck
from tunekit.methods.full import decoder_layers
from tunekit.methods.plan import MethodPlan

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

WEIGHTS = "interventions.safetensors"
CONFIG = "interventions.json"
ATTR = "tunekit_interventions"


def _modules(cfg: dict, model: Any) -> Any:
    import torch
    from torch import nn
    from torch.nn.utils.parametrizations import orthogonal

    c = model.config
    d, n_heads = c.hidden_size, c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or d // n_heads
    n_layers = len(decoder_layers(model))

    class LoreftIntervention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rotate = orthogonal(nn.Linear(d, cfg["rank"], bias=False))  # R: orthonormal rows
            self.learned = nn.Linear(d, cfg["rank"])  # W, b
            self.dropout = nn.Dropout(cfg["dropout"])

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            r = self.rotate.weight
            return h + (self.learned(self.dropout(h)) - h @ r.T) @ r

    class LofitIntervention(nn.Module):
        def __init__(self, heads: list[int]) -> None:
            super().__init__()
            self.register_buffer("heads", torch.tensor(heads, dtype=torch.long))
            self.offset = nn.Parameter(torch.zeros(len(heads), head_dim))
            self.scale = nn.Parameter(torch.zeros(len(heads), head_dim)) if cfg["scale"] else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: o_proj input [..., n_heads * head_dim]
            shape = x.shape
            x = x.reshape(*shape[:-1], n_heads, head_dim)
            zero = x.new_zeros(n_heads, head_dim)
            if self.scale is not None:
                x = x * (1 + zero.index_copy(0, self.heads, self.scale.to(x.dtype)))
            return (x + zero.index_copy(0, self.heads, self.offset.to(x.dtype))).reshape(shape)

    class Interventions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enabled = True
            self.per_layer = nn.ModuleDict()

    box = Interventions()
    if cfg["method"] in ("loreft", "bottleneck"):
        layers = range(n_layers) if cfg["layers"] == "all" else cfg["layers"]
        for i in layers:
            if not 0 <= i < n_layers:
                raise UserError(f"method.layers: layer {i} does not exist (the model has {n_layers})")
            box.per_layer[str(i)] = LoreftIntervention() if cfg["method"] == "loreft" else bottleneck.adapter(d, cfg)
    else:
        pairs = ([[i, h] for i in range(n_layers) for h in range(n_heads)] if cfg["heads"] == "all"
                 else cfg["heads"])
        by_layer: dict[int, list[int]] = {}
        for i, h in pairs:
            if not (0 <= i < n_layers and 0 <= h < n_heads):
                raise UserError(f"method.heads: [{i}, {h}] is out of range ({n_layers} layers x {n_heads} heads)")
            by_layer.setdefault(i, []).append(h)
        for i, heads in sorted(by_layer.items()):
            box.per_layer[str(i)] = LofitIntervention(sorted(set(heads)))
    return box


def attach(model: Any, cfg: dict) -> Any:
    """Add the interventions (new weights, seeded by the caller) to `model` and hook them in."""
    box = _modules(cfg, model)
    box.cfg = cfg
    box.handles = []
    box.mask = box.labels = None
    model.add_module(ATTR, box)
    if cfg["method"] == "loreft" and cfg.get("positions", "all") != "all":
        box.handles.append(model.register_forward_pre_hook(_positions_hook(box, cfg), with_kwargs=True))
    layers = decoder_layers(model)
    for key, module in box.per_layer.items():
        layer = layers[int(key)]
        if cfg["method"] == "loreft":
            box.handles.append(layer.register_forward_hook(_loreft_hook(box, module)))
        elif cfg["method"] == "bottleneck":
            box.handles.append(layer.mlp.register_forward_hook(bottleneck.hook(box, module, cfg["placement"])))
        else:
            box.handles.append(layer.self_attn.o_proj.register_forward_pre_hook(_lofit_hook(box, module)))
    return model


def detach(model: Any) -> None:
    """Remove the interventions and their hooks: the model is the plain base again."""
    for handle in getattr(model, ATTR).handles:
        handle.remove()
    delattr(model, ATTR)


def select_heads(model: Any, cfg: dict, calibration: list[dict] | None, lr: float) -> dict:
    """LoFiT's first step: learn a scale per candidate head (offsets stay zero) on the calibration batches, then
    keep the top K heads by the L1 norm of their scales. Returns `cfg` with the chosen `heads` and their scores.
    Without batches (parameter counting on the meta device) the first K candidates stand in: same count."""
    import torch

    probe = attach(model, {**cfg, "scale": True})
    box = getattr(probe, ATTR)
    candidates = [[int(i), int(h)] for i, m in box.per_layer.items() for h in m.heads.tolist()]
    k = cfg["select_heads"] if isinstance(cfg["select_heads"], int) else round(cfg["select_heads"] * len(candidates))
    k = max(1, min(k, len(candidates)))
    scores = torch.zeros(len(candidates))
    if calibration:
        scales = [m.scale for m in box.per_layer.values()]
        for m in box.per_layer.values():
            m.offset.requires_grad_(False)
        opt = torch.optim.AdamW(scales, lr=lr, weight_decay=0.0)
        device = next(model.parameters()).device
        with torch.enable_grad():
            for step in range(cfg["select_steps"]):
                batch = {key: v.to(device) for key, v in calibration[step % len(calibration)].items()}
                loss = model(**batch).loss + cfg["select_l1"] * sum(a.abs().sum() for a in scales)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        scores = torch.cat([a.detach().abs().sum(-1).float().cpu() for a in scales])
    detach(model)
    top = sorted(torch.argsort(-scores, stable=True)[:k].tolist())  # ties: the earlier head
    return {**cfg, "heads": [candidates[j] for j in top], "select_heads": None,
            "selection": {"candidates": len(candidates), "kept": k, "steps": cfg["select_steps"] if calibration else 0,
                          "scores": {f"{i}.{h}": round(float(v), 6) for (i, h), v in zip(candidates, scores)}}}


def _loreft_hook(box: Any, module: Any) -> Any:
    def hook(_mod: Any, _args: Any, output: Any) -> Any:
        if not box.enabled:
            return None
        import torch

        h = output[0] if isinstance(output, tuple) else output
        if box.mask is None:  # positions: all
            new = module(h)
        else:  # the positions computed for this forward (_positions_hook)
            new = torch.where(box.mask.to(h.device).unsqueeze(-1), module(h), h)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def position_mask(cfg: dict, labels: Any, attention_mask: Any, shape: tuple, decoding: bool) -> Any:
    """Where LoReFT intervenes, [batch, seq] booleans, for positions first / last / first_last. `first`: each row's
    first `first_n` tokens (padding skipped). `last` with labels (training, scoring): the `last_n` tokens before
    each trained span (labels[t] != -100 marks token t as trained, so the prompt ends at t - 1); without labels
    (prefill at inference): the last `last_n` tokens of each row's input. Decoding steps (a cache already holds
    the prompt) intervene nowhere: generated tokens are never prompt positions."""
    import torch
    import torch.nn.functional as F

    mask = torch.zeros(shape, dtype=torch.bool)
    if decoding:
        return mask
    seq = shape[1]
    valid = torch.ones(shape, dtype=torch.bool) if attention_mask is None else \
        attention_mask[:, -seq:].bool().cpu()  # the attention mask may also cover cached tokens
    if cfg["positions"] in ("first", "first_last"):
        mask |= valid & (valid.cumsum(1) <= cfg["first_n"])
    if cfg["positions"] in ("last", "first_last"):
        n = cfg["last_n"]
        if labels is not None:
            trained = labels != -100
            starts = trained & ~F.pad(trained, (1, 0))[:, :-1]  # first token of each trained span
            mask |= F.pad(starts, (0, n))[:, 1:].unfold(1, n, 1).any(-1) & ~trained  # a span starts within n
        else:
            mask |= valid & (valid.flip(1).cumsum(1).flip(1) <= n)  # valid tokens at or after each position
    return mask


def _positions_hook(box: Any, cfg: dict) -> Any:
    def hook(_mod: Any, args: Any, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = tuple((ids if ids is not None else embeds).shape[:2])
        labels = kwargs.get("labels") if kwargs.get("labels") is not None else box.labels
        if labels is not None and tuple(labels.shape) != shape:
            labels = None
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 calls it `cache`
        decoding = past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0
        box.mask = position_mask(cfg, labels.cpu() if labels is not None else None, kwargs.get("attention_mask"),
                                 shape, decoding)

    return hook


def labels_for_positions(model: Any, labels: Any) -> Any:
    """A context in which LoReFT's `last` positions come from these labels: for trainers whose loss code calls the
    model without its labels (TRL's SFTTrainer computes the loss itself)."""
    import contextlib

    @contextlib.contextmanager
    def ctx() -> Any:
        box = getattr(model, ATTR, None) or getattr(getattr(model, "module", None), ATTR, None)
        if box is None:
            yield
            return
        box.labels = labels
        try:
            yield
        finally:
            box.labels = None

    return ctx()


def _lofit_hook(box: Any, module: Any) -> Any:
    def hook(_mod: Any, args: Any) -> Any:
        if not box.enabled:
            return None
        return (module(args[0]), *args[1:])

    return hook


def config_of(cfg: Any) -> dict:
    return cfg.model_dump(mode="json") | {"method": cfg.name}


def build(model: Any, cfg: Any, recipe: Recipe, calibration: list[dict] | None = None) -> Any:
    """`calibration`: training batches for LoFiT's head selection (`select_heads`)."""
    for p in model.parameters():
        p.requires_grad_(False)
    config = config_of(cfg)
    if config.get("select_heads"):
        config = select_heads(model, config, calibration, recipe.trainer.learning_rate)
    attach(model, config)
    return MethodPlan(model=model, save=save)


def save(model: Any, final_dir: Path) -> None:
    from safetensors.torch import save_file

    box = getattr(model, ATTR)
    final_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in box.state_dict().items()}, str(final_dir / WEIGHTS))
    (final_dir / CONFIG).write_text(json.dumps(box_config(model), indent=2) + "\n", encoding="utf-8")


def box_config(model: Any) -> dict:
    return getattr(model, ATTR).cfg


def load(base: Any, final_dir: Path) -> Any:
    """Rebuild the interventions saved in `final_dir` on a freshly loaded base model."""
    from safetensors.torch import load_file

    cfg = json.loads((Path(final_dir) / CONFIG).read_text(encoding="utf-8"))
    attach(base, cfg)
    box = getattr(base, ATTR)
    box.load_state_dict(load_file(str(Path(final_dir) / WEIGHTS)))
    for p in base.parameters():
        p.requires_grad_(False)
    return base
