"""Fold an adapter into its base model, checked: the merged model's logits must match the adapter model's.

The adapter is merged into the (unquantized) base in `--dtype`; the largest logit difference between the
adapter model and the merged model on a few prompts is reported and must stay within `--tolerance`. The
output is a plain transformers model directory: safetensors weights, config, the tokenizer with its chat
template, and merge.json describing what was done. Every merge writes into `OUT.partial-PID` next to --out and
renames it to --out once complete (merge.json last), so a merge that is killed never leaves an --out that looks like
a model; the next merge to the same --out removes such a leftover.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunekit.data.templates import generation_prompts
from tunekit.errors import UserError
from tunekit.paths import as_umask_allows, create_dir
from tunekit.targets import Target, load_tokenizer_for, load_tuned, resolve_target, tokenizer_source
from tunekit.ui import console

PROBES = ["What is 7 plus 5?", "Compute 12 times 3.", "Write one sentence about the sea.", "Say hello in French."]


PARTIAL = ".partial-"  # OUT.partial-PID: where a merge writes before it is renamed to OUT


def prepare_out(out: Path) -> Path:
    """Check --out (absent or an empty directory) and create the partial directory the merge writes into; partial
    directories left by merges that were killed are removed first."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out: `{out}` already exists and is not an empty directory; choose another --out")
    for old in out.parent.glob(glob.escape(out.name) + PARTIAL + "*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
            console.print(f"removed {old}: left by a merge that did not finish")
    return create_dir(out.parent / f"{out.name}{PARTIAL}{os.getpid()}", "--out", out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def partial_out(out: Path) -> Iterator[Path]:
    """The partial directory for --out (`prepare_out`); removed again when the merge fails or is interrupted."""
    partial = prepare_out(out)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def check_mergeable(t: Target) -> None:
    """Refuse an input whose result cannot be folded into a model's weights: LoReFT/LoFiT interventions and
    bottleneck adapters, and virtual-token adapters (prompt tuning, prefix tuning, p-tuning)."""
    if t.kind == "interventions":
        raise UserError(f"{t.weights}: holds LoReFT/LoFiT interventions or bottleneck adapters, which act on hidden "
                        "states at run time and cannot be folded into the weights; evaluate or serve the run with "
                        "them attached")
    if t.kind != "adapter":
        return
    from peft import PeftConfig

    cfg = PeftConfig.from_pretrained(t.weights)
    if cfg.is_prompt_learning:
        name = str(getattr(cfg.peft_type, "value", cfg.peft_type)).lower()
        raise UserError(f"{t.weights}: holds a {name} adapter, whose virtual tokens are put in front of the input "
                        "at run time: there are no weights to fold into the base model. Use the run with its "
                        "adapter attached (tunekit eval / tunekit chat on the run, or peft's PeftModel)")


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


def save(model: Any, tokenizer: Any, partial: Path, out: Path, info: dict) -> None:
    """Write the merged model into `partial`, merge.json last, then rename it to `out` (an empty `out` is
    replaced)."""
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "merge.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    as_umask_allows(partial)
    partial.replace(out)


def merge_adapter(target: str, out: Path, dtype: str = "float32", tolerance: float = 1e-4) -> dict:
    """Merge a run's (or adapter directory's) adapter into its base; refuse when logits drift past tolerance."""
    t = resolve_target(target)
    check_mergeable(t)
    if t.note:
        console.print(f"weights: {t.weights} ({t.note})")
    if t.kind != "adapter":
        raise UserError(f"{t.weights}: holds a full model, not an adapter, so there is nothing to merge into a "
                        "base; use it as it is, or give several inputs with --method to merge models")
    with partial_out(out) as partial:
        tokenizer = load_tokenizer_for(t)
        model = load_tuned(t, dtype)
        model.eval()
        batch = probe_batch(tokenizer)
        before = logits(model, batch)
        merged = model.merge_and_unload()
        diff = float((before - logits(merged, batch)).abs().max())
        info = {"method": "adapter", "inputs": [str(target)], "adapter": t.weights, "base": t.model_cfg.path,
                "tokenizer": tokenizer_source(t), "dtype": dtype, "max_logit_diff": diff, "tolerance": tolerance,
                "probes": PROBES}
        if not diff <= tolerance:
            raise UserError(f"{t.weights}: the merged model's logits differ from the adapter model's by {diff:.3g}, "
                            f"more than --tolerance {tolerance:g}; nothing was saved (use --dtype float32, or "
                            "raise --tolerance for half precision)")
        save(merged, tokenizer, partial, out, info)
    console.print(f"merged {t.weights} into {t.model_cfg.path}: max logit difference {diff:.3g} "
                  f"(tolerance {tolerance:g}) -> {out}")
    return info
