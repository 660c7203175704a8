"""Merge several fine-tuned models (adapters or full models) that share one base, on task vectors.

Every input is turned into a full state dict (adapters are merged into the base first); its task
vector is `weights - base`. Methods combine the task vectors tensor by tensor, using peft's merge
utilities (`peft.utils.merge_utils`) where they exist:

  linear / soup    weighted average of the models (weights normalised to sum 1; uniform by default)
  greedy_soup      models sorted by eval loss on --eval-data; each is added to the soup if the soup's
                   loss does not rise; the kept ones are averaged uniformly
  task_arithmetic  base + scale * sum_i w_i * tau_i
  ties             trim each tau to its top `density` magnitudes, elect signs, average agreeing entries
  dare_linear      drop entries at random (keep `density`, rescale by 1/density), then weighted sum
  dare_ties        DARE drops, then TIES sign election and disjoint mean
  magnitude_prune  keep each tau's top `density` magnitudes, then weighted sum
  breadcrumbs      drop each tau's top `outliers` fraction and keep the next `density` fraction, then sum
  model_stock      Model Stock (Jang et al. 2024): per tensor, w0 + t * (w_avg - w0) with
                   t = k cos(theta) / (1 + (k - 1) cos(theta)), theta the angle between the task vectors
                   (k > 2: the mean pairwise cosine); no weights, density or scale
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunekit.errors import UserError
from tunekit.eval.schema import EvalTask, TaskData
from tunekit.eval.tasks import run_loss
from tunekit.merge.adapter import check_mergeable, partial_out, save
from tunekit.model.load import resolve_model_path
from tunekit.model.schema import ModelConfig
from tunekit.targets import (
    Target,
    load_base,
    load_tokenizer_for,
    load_tuned,
    resolve_target,
    tokenizer_source,
)
from tunekit.ui import console

METHODS = ("linear", "soup", "greedy_soup", "task_arithmetic", "ties", "dare_linear", "dare_ties",
           "magnitude_prune", "breadcrumbs", "model_stock")


def breadcrumbs_mask(tau: Any, density: float, outliers: float) -> Any:
    """1 where |tau| ranks after the top `outliers` fraction and within the next `density` fraction."""
    import torch

    flat = tau.abs().reshape(-1)
    n = flat.numel()
    top, keep = int(outliers * n), int(density * n)
    order = torch.argsort(flat, descending=True, stable=True)
    mask = torch.zeros(n, dtype=tau.dtype)
    mask[order[top : top + keep]] = 1
    return mask.reshape(tau.shape)


def model_stock_ratio(taus: list[Any]) -> float:
    """Model Stock's interpolation ratio t = k cos / (1 + (k - 1) cos) for one tensor's k task vectors.

    cos is the cosine between the task vectors (the paper's angle at the pre-trained weights; for k > 2 the mean
    over pairs, as the paper assumes equal angles). A zero task vector has no angle: cos counts as 0 (t = 0, the
    base). The paper assumes cos > 0; a negative cos is kept (t < 0 extrapolates away from the average), except at
    the pole 1 + (k - 1) cos = 0, where t is 0. merge.json reports the range of t.
    """
    flat = [t.reshape(-1).double() for t in taus]
    cosines = []
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            denom = flat[i].norm() * flat[j].norm()
            cosines.append(float(flat[i] @ flat[j] / denom) if denom > 0 else 0.0)
    cos, k = sum(cosines) / len(cosines), len(taus)
    den = 1 + (k - 1) * cos
    return 0.0 if abs(den) < 1e-12 else k * cos / den


def combine(taus: list[Any], method: str, weights: list[float], density: float, outliers: float = 0.01) -> Any:
    """The combined task vector for one tensor (without the `scale` factor)."""
    import torch
    from peft.utils import merge_utils as mu

    w = torch.tensor(weights, dtype=taus[0].dtype)
    if method in ("linear", "soup", "greedy_soup", "task_arithmetic"):
        return mu.task_arithmetic(taus, w)
    if method == "ties":
        return mu.ties(taus, w, density)
    if method == "dare_linear":
        return mu.dare_linear(taus, w, density)
    if method == "dare_ties":
        return mu.dare_ties(taus, w, density)
    if method == "magnitude_prune":
        return mu.magnitude_prune(taus, w, density)
    if method == "breadcrumbs":
        return mu.task_arithmetic([t * breadcrumbs_mask(t, density, outliers) for t in taus], w)
    if method == "model_stock":
        return model_stock_ratio(taus) * torch.stack(taus).mean(dim=0)
    raise UserError(f"--method {method}: unknown; choose one of {', '.join(METHODS)}")


def merge_states(base: dict, states: list[dict], method: str, weights: list[float] | None, density: float = 0.5,
                 scale: float = 1.0, outliers: float = 0.01) -> dict:
    """base + scale * combine(task vectors); linear/soup use normalised weights and no scale."""
    n = len(states)
    if method in ("linear", "soup", "greedy_soup", "model_stock"):
        w = weights or [1.0] * n
        w, scale = [x / sum(w) for x in w], 1.0
    else:
        w = weights or [1.0] * n
    out = {}
    for key, b in base.items():
        if not b.is_floating_point():
            out[key] = b
            continue
        taus = [s[key].float() - b.float() for s in states]
        out[key] = (b.float() + scale * combine(taus, method, w, density, outliers)).to(b.dtype)
    return out


def _input_origin(t: Target) -> str:
    if t.run_dir is not None:
        return str(t.run_dir / "recipe.resolved.yaml")
    return str(Path(t.weights) / ("adapter_config.json" if t.kind == "adapter" else "config.json"))


def load_inputs(inputs: list[str], base: str | None) -> tuple[Target, list[Target], ModelConfig]:
    """(base target, input targets, base model); each input's base must be the same model."""
    targets = [resolve_target(i) for i in inputs]
    for t in targets:
        check_mergeable(t)
        if t.note:
            console.print(f"weights: {t.weights} ({t.note})")
    known = [t for t in targets if t.kind == "adapter" or t.run_dir is not None]
    if base:
        cfg = ModelConfig(path=base, dtype="float32")
    elif known:
        cfg = known[0].model_cfg
    else:
        raise UserError("merge: none of the inputs names its base model (plain model directories); pass --base")
    base_path = resolve_model_path(cfg)
    for t in known:
        if resolve_model_path(t.model_cfg) != base_path:
            raise UserError(f"{_input_origin(t)}: this input's base model is `{t.model_cfg.path}` "
                            f"({resolve_model_path(t.model_cfg)}) but the merge base is `{cfg.path}` ({base_path}); "
                            "models can only be merged when they were tuned from the same base")
    base_t = Target(cfg.path, base_path, "full", cfg)
    return base_t, targets, cfg


def full_state(t: Target) -> dict:
    model = load_tuned(t, "float32")
    if t.kind == "adapter":
        model = model.merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def shared_tokenizer(targets: list[Target]) -> Any:
    """The inputs' tokenizer: the merged model keeps one, so every input's vocabulary and chat template must be
    the first input's."""
    toks = [load_tokenizer_for(t) for t in targets]
    for t, tok in zip(targets[1:], toks[1:]):
        differs = ("vocabulary" if tok.get_vocab() != toks[0].get_vocab() else
                   "chat template" if getattr(tok, "chat_template", None) != getattr(toks[0], "chat_template", None)
                   else None)
        if differs:
            raise UserError(f"merge: the inputs `{targets[0].label}` and `{t.label}` have different tokenizers (the "
                            f"{differs} of {tokenizer_source(t)} is not the one of {tokenizer_source(targets[0])}); "
                            "a merged model keeps one tokenizer, so merge only models trained with the same "
                            "tokenizer and chat template")
    return toks[0]


def check_shapes(base: dict, state: dict, t: Target) -> None:
    where = _input_origin(t)
    missing = sorted(set(base) - set(state))
    if missing:
        raise UserError(f"{where}: the model has no tensor `{missing[0]}` (and {len(missing) - 1} more) that the "
                        "base has; these models do not share an architecture")
    for k, b in base.items():
        if state[k].shape != b.shape:
            raise UserError(f"{where}: tensor `{k}` has shape {tuple(state[k].shape)} but the base has "
                            f"{tuple(b.shape)}; models with different shapes cannot be merged")


def eval_loss(model: Any, tokenizer: Any, eval_data: str) -> float:
    task = EvalTask(name="greedy-soup", kind="loss", data=TaskData(path=eval_data, format="messages"))
    model.eval()
    return run_loss(task, model, tokenizer, {"max_length": 1024, "batch_size": 8, "which": "soup"})["metrics"]["loss"]


def greedy_soup(base: dict, states: list[dict], model: Any, tokenizer: Any, eval_data: str) -> tuple[list, dict]:
    def score(sd: dict) -> float:
        model.load_state_dict(sd)
        return eval_loss(model, tokenizer, eval_data)

    singles = [score(s) for s in states]
    order = sorted(range(len(states)), key=lambda i: singles[i])
    kept, best = [order[0]], singles[order[0]]
    for i in order[1:]:
        trial = score(merge_states(base, [states[j] for j in [*kept, i]], "linear", None))
        if trial <= best:
            kept, best = [*kept, i], trial
    return kept, {"individual_losses": singles, "kept": kept, "soup_loss": best}


def model_stock_summary(base: dict, states: list[dict]) -> dict:
    """The range of Model Stock's ratio t over the tensors some input changed (for merge.json)."""
    import torch

    ratios = [model_stock_ratio([s[k].float() - b.float() for s in states]) for k, b in base.items()
              if b.is_floating_point() and any(not torch.equal(s[k], b) for s in states)]
    return {"tensors": len(ratios), "min": min(ratios, default=None), "max": max(ratios, default=None),
            "mean": sum(ratios) / len(ratios) if ratios else None}


def merge_models(inputs: list[str], out: Path, method: str, weights: list[float] | None, density: float,
                 scale: float, base: str | None, eval_data: str | None, dtype: str, seed: int,
                 outliers: float = 0.01) -> dict:
    import torch

    if method not in METHODS:
        raise UserError(f"--method {method}: unknown; choose one of {', '.join(METHODS)}")
    if weights is not None and len(weights) != len(inputs):
        raise UserError(f"--weights: {len(weights)} weights for {len(inputs)} inputs; give one weight per input")
    if method == "model_stock" and weights is not None:
        raise UserError("--weights: model_stock sets its own interpolation ratio per tensor; remove --weights")
    if not 0.0 < density <= 1.0:
        raise UserError(f"--density {density}: must be in (0, 1]")
    if method == "greedy_soup" and not eval_data:
        raise UserError("--method greedy_soup needs --eval-data FILE (JSONL, messages format) to score the soup")
    base_t, targets, _ = load_inputs(inputs, base)
    tokenizer = shared_tokenizer(targets)
    with partial_out(out) as partial:
        model = load_base(base_t, "float32")
        base_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        states = []
        for t in targets:
            states.append(full_state(t))
            check_shapes(base_sd, states[-1], t)
        info: dict = {"method": method, "inputs": inputs, "base": base_t.label,
                      "tokenizer": tokenizer_source(targets[0]), "weights": weights, "density": density,
                      "scale": scale, "seed": seed, "dtype": dtype}
        if method == "greedy_soup":
            kept, details = greedy_soup(base_sd, states, model, tokenizer, eval_data or "")
            info.update(details, ingredients=[inputs[i] for i in kept])
            states, weights = [states[i] for i in kept], None
        torch.manual_seed(seed)
        merged = merge_states(base_sd, states, method, weights, density, scale, outliers)
        if method == "model_stock":
            info["model_stock_t"] = model_stock_summary(base_sd, states)
        model.load_state_dict(merged)
        model.to(getattr(torch, dtype))
        save(model, tokenizer, partial, out, info)
    console.print(f"merged {len(states)} models with {method} -> {out}")
    return info
