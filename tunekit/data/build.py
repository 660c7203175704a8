"""Build the tokenized train/eval datasets the trainers consume: input_ids + labels (-100 where untrained)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunekit.data.formats import FORMATS
from tunekit.data.masking import tokenize_with_mask
from tunekit.data.schema import DataConfig, DatasetSpec
from tunekit.data.sources import read_rows
from tunekit.errors import UserError


@dataclass
class DataStats:
    rows_in: int = 0
    rows_out: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "tokens": self.tokens,
                "trained_tokens": self.trained_tokens, "truncated": self.truncated, "dropped": dict(self.dropped)}


def encode_spec(spec: DatasetSpec, cfg: DataConfig, tokenizer: Any, stats: DataStats) -> list[dict]:
    path, rows = read_rows(spec.path)
    fmt = FORMATS[spec.format]
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i + 1}"
        messages = fmt(row, spec.columns, where)
        enc = tokenize_with_mask(tokenizer, messages, cfg.train_on, where)
        ids, mask = enc["input_ids"], enc["mask"]
        stats.rows_in += 1
        if len(ids) > cfg.max_length:
            if cfg.length_policy == "drop":
                stats.dropped["longer than max_length"] += 1
                continue
            ids, mask = ids[: cfg.max_length], mask[: cfg.max_length]
            stats.truncated += 1
        if not any(mask):
            if len(enc["input_ids"]) > cfg.max_length:
                raise UserError(f"{where}: no trained tokens remain after truncation to max_length="
                                f"{cfg.max_length}; raise data.max_length or set data.length_policy: drop")
            raise UserError(f"{where}: the example has no trained tokens (check the format and data.train_on)")
        labels = [t if m else -100 for t, m in zip(ids, mask)]
        stats.rows_out += 1
        stats.tokens += len(ids)
        stats.trained_tokens += sum(mask)
        out.append({"input_ids": ids, "labels": labels})
    return out


def build_datasets(cfg: DataConfig, tokenizer: Any, seed: int) -> tuple[Any, Any | None, dict]:
    """Returns (train Dataset, eval Dataset or None, stats dict)."""
    from datasets import Dataset

    from tunekit.data.preference import build_preference_datasets, is_preference_data

    if is_preference_data(cfg):  # preference / RL formats: conversational columns for TRL (data/preference.py)
        return build_preference_datasets(cfg, tokenizer, seed)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("model: the tokenizer has no chat template; choose a model whose tokenizer ships one")
    train_stats, eval_stats = DataStats(), DataStats()
    train = [r for spec in cfg.train for r in encode_spec(spec, cfg, tokenizer, train_stats)]
    rng = random.Random(cfg.shuffle_seed if cfg.shuffle_seed is not None else seed)
    rng.shuffle(train)
    evals = [r for spec in cfg.eval for r in encode_spec(spec, cfg, tokenizer, eval_stats)]
    if cfg.eval_fraction:
        n_eval = max(1, int(len(train) * cfg.eval_fraction))
        evals, train = train[:n_eval], train[n_eval:]
    if not train:
        raise UserError("data: no training rows left after filtering (see the drop counts above)")
    stats = {"train": train_stats.as_dict(), "eval": eval_stats.as_dict() if cfg.eval else None,
             "train_rows": len(train), "eval_rows": len(evals)}
    return Dataset.from_list(train), (Dataset.from_list(evals) if evals else None), stats
