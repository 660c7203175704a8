"""Fold an adapter into its base model, checked: the merged model's logits must match the adapter model's.

The adapter is merged into the (unquantized) base in `--dtype`; the largest logit difference between the
adapter model and the merged model on a few prompts is reported and must stay within `--tolerance`. The
output is a plain transformers model directory: safetensors weights, config, the tokenizer with its chat
template, and merge.json describing what was done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunekit.data.templates import generation_prompts
from tunekit.errors import UserError
from tunekit.targets import load_tokenizer_for, load_tuned, resolve_target
from tunekit.ui import console

PROBES = ["What is 7 plus 5?", "Compute 12 times 3.", "Write one sentence about the sea.", "Say hello in French."]


def prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out: `{out}` already exists and is not an empty directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def probe_batch(tokenizer: Any) -> dict:
    chat = getattr(tokenizer, "chat_template", None)  # a run on plain text (no template) is probed with the text
    texts = generation_prompts(tokenizer, [[{"role": "user", "content": p}] for p in PROBES]) if chat else PROBES
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))
    finally:
        tokenizer.padding_side = side


def logits(model: Any, batch: dict) -> Any:
    import torch

    with torch.no_grad():
        out = model(**batch).logits.float()
    return out * batch["attention_mask"].unsqueeze(-1)  # padding positions do not count


def save(model: Any, tokenizer: Any, out: Path, info: dict) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "merge.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def merge_adapter(target: str, out: Path, dtype: str = "float32", tolerance: float = 1e-4) -> dict:
    """Merge a run's (or adapter directory's) adapter into its base; refuse when logits drift past tolerance."""
    t = resolve_target(target)
    if t.kind == "interventions":
        raise UserError(f"{t.weights}: holds LoReFT/LoFiT interventions or bottleneck adapters, which act on hidden "
                        "states at run time and cannot be folded into the weights; evaluate or serve the run with "
                        "them attached")
    if t.kind != "adapter":
        raise UserError(f"{t.weights}: holds a full model, not an adapter, so there is nothing to merge into a "
                        "base; use it as it is, or give several inputs with --method to merge models")
    prepare_out(out)
    tokenizer = load_tokenizer_for(t)
    model = load_tuned(t, dtype)
    model.eval()
    batch = probe_batch(tokenizer)
    before = logits(model, batch)
    merged = model.merge_and_unload()
    diff = float((before - logits(merged, batch)).abs().max())
    info = {"method": "adapter", "inputs": [str(target)], "adapter": t.weights, "base": t.model_cfg.path,
            "dtype": dtype, "max_logit_diff": diff, "tolerance": tolerance, "probes": PROBES}
    if not diff <= tolerance:
        out.rmdir()
        raise UserError(f"{t.weights}: the merged model's logits differ from the adapter model's by {diff:.3g}, "
                        f"more than --tolerance {tolerance:g}; nothing was saved (use --dtype float32, or "
                        "raise --tolerance for half precision)")
    save(merged, tokenizer, out, info)
    console.print(f"merged {t.weights} into {t.model_cfg.path}: max logit difference {diff:.3g} "
                  f"(tolerance {tolerance:g}) -> {out}")
    return info
