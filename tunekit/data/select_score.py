"""Score steps of `data.select`: perplexity and IFD of tokenized SFT examples under a scoring model.

For an example with token ids x and trained positions T (labels != -100), with l_t = -log p(x_t | x_<t):

    perplexity = exp(mean_{t in T} l_t)
    IFD        = mean_{t in T} l_t  /  mean over the answer alone of l_t

"The answer alone" is the trained tokens in order, after one start token (the tokenizer's BOS, else its EOS, the
document separator of BOS-less models), so every answer token is scored in both terms (Li et al., "From Quantity to
Quality", 2023, score the response tokenized on its own). The model runs in eval mode without gradients on the
recipe's device (the current CUDA device, else the CPU), in batches of rows of similar length, with a progress bar;
upsampled copies of one example are scored once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunekit import paths
from tunekit.data.schema import ScoreStep
from tunekit.errors import UserError
from tunekit.files import file_sha256
from tunekit.model import builtin
from tunekit.model.load import load_model, load_tokenizer, resolve_model_path, torch_dtype
from tunekit.model.schema import ModelConfig
from tunekit.ui import console


def scoring_model(step: ScoreStep, recipe_model: ModelConfig | None, where: str) -> ModelConfig:
    """The step's model (loaded with the recipe model's dtype and attention), else the recipe's model."""
    if recipe_model is None:
        raise UserError(f"{where}: score steps need the recipe's model section (call build_datasets with model=)")
    if step.model is None:
        return recipe_model
    return ModelConfig(path=step.model, revision=step.revision, dtype=recipe_model.dtype,
                       attn_implementation=recipe_model.attn_implementation)


def model_identity(cfg: ModelConfig) -> dict:
    """What the data cache keys a scoring model on: the sha256 of every file of a local (or builtin) model
    directory, or a hub id with its revision (the cached snapshot's commit when none is pinned); and the dtype."""
    out: dict[str, Any] = {"path": cfg.path, "dtype": str(torch_dtype(cfg.dtype))}
    local = Path(cfg.path).expanduser()
    if builtin.is_builtin(cfg.path) or local.is_dir():
        folder = Path(resolve_model_path(cfg))
        out["files"] = {p.name: _sha256_memo(p) for p in sorted(folder.iterdir()) if p.is_file()}
        return out
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(cfg.path, "config.json", revision=cfg.revision)
    out["revision"] = Path(cached).parent.name if isinstance(cached, str) else cfg.revision
    return out


def _sha256_memo(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so large weights are hashed once, not on every run."""
    memo_file = paths.cache_root() / "file-hashes.json"
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = file_sha256(path)
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_name(f"{memo_file.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo), encoding="utf-8")
        os.replace(tmp, memo_file)  # atomic: concurrent ranks never read half a file
    return memo[key]


def load_scorer(cfg: ModelConfig, tokenizer: Any, where: str, own_model: bool) -> Any:
    """The scoring model on the recipe's device in eval mode. A model other than the recipe's (`own_model`) must
    have the recipe tokenizer's vocabulary."""
    import torch

    path = resolve_model_path(cfg)
    if own_model and load_tokenizer(cfg, path).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"{where}.model: `{cfg.path}` uses another tokenizer than the recipe's; scoring reads the "
                        "recipe's token ids, so the scoring model must share its vocabulary (e.g. a smaller model "
                        "of the same family)")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return load_model(cfg, path).to(device).eval()


def token_losses(model: Any, seqs: list[Any], pad_id: int) -> list[Any]:
    """Per sequence, -log p(token | the tokens before it) for tokens 1..n-1 (float32 numpy arrays)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.int64).copy())
        attn[i, : len(s)] = 1
    ids, attn = ids.to(device), attn.to(device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits
        return [F.cross_entropy(logits[i, : len(s) - 1].float(), ids[i, 1 : len(s)], reduction="none").cpu().numpy()
                for i, s in enumerate(seqs)]


def example_scores(model: Any, examples: list[tuple[Any, Any]], by: str, start_id: int, pad_id: int) -> list[float]:
    """Perplexity or IFD of each (input_ids, labels) example (numpy int arrays)."""
    import numpy as np

    losses = token_losses(model, [ids for ids, _ in examples], pad_id)
    cond = [float(loss[labels[1:] != -100].mean()) for loss, (_, labels) in zip(losses, examples)]
    if by == "perplexity":
        return [math.exp(min(c, 700.0)) for c in cond]
    alone = token_losses(model, [np.concatenate([[start_id], ids[labels != -100]]) for ids, labels in examples],
                         pad_id)
    return [c / max(float(a.mean()), 1e-12) for c, a in zip(cond, alone)]


def score_rows(step: ScoreStep, model: Any, tokenizer: Any, rows: Any, lengths: Any,
               fetch: Callable[[Any], list[tuple[Any, Any]]], identity: Callable[[int], Any], label: str) -> Any:
    """Scores of the split rows `rows` (in that order): unique examples scored longest first, `batch_size` a pass."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    first: dict[Any, int] = {}
    unique = [r for r in rows.tolist() if first.setdefault(identity(r), r) == r]
    unique.sort(key=lambda r: -int(lengths[r]))
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    got: dict[int, float] = {}
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                   transient=True)
    with bar:
        task = bar.add_task(label, total=len(unique))
        for start in range(0, len(unique), step.batch_size):
            batch = unique[start : start + step.batch_size]
            got.update(zip(batch, example_scores(model, fetch(np.asarray(batch)), step.by, start_id, pad_id)))
            bar.update(task, advance=len(batch))
    return np.asarray([got[first[identity(r)]] for r in rows.tolist()], dtype=np.float64)
