"""Build the tokenized train/eval datasets the trainers consume: input_ids + labels (-100 where untrained),
plus `seq_lengths` per row when packed.

sources -> mixture sampling -> format -> chat template + loss mask -> length policy -> shuffle / eval
hold-out -> packing -> cache. Every row read ends up in the output or counted with its reason.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tunekit.data import cache
from tunekit.data.formats import FORMATS
from tunekit.data.masking import conversation_examples, tokenize_plain, tokenize_texts
from tunekit.data.messages import merge_system_into_first_user
from tunekit.data.packing import pack
from tunekit.data.preference import build_preference_datasets, is_preference_data
from tunekit.data.schema import DataConfig, DatasetSpec
from tunekit.data.sources import Rows, read_rows
from tunekit.data.stats import DataStats, split_summary
from tunekit.data.templates import apply_chat_template_choice, renderer
from tunekit.errors import UserError

CHUNK = 2048  # rows tokenized per batch call
NOT_SELECTED = "not selected by the dataset mixture (samples/weight)"


def mixture_counts(specs: list[DatasetSpec], sizes: list[int]) -> list[int]:
    """How many rows each dataset contributes: all, `samples`, or its `weight` share of the weighted total."""
    weighted = [(s.weight, n) for s, n in zip(specs, sizes) if s.weight is not None]
    total, wsum = sum(n for _, n in weighted), sum(w for w, _ in weighted)
    out = []
    for s, n in zip(specs, sizes):
        if s.samples is not None:
            out.append(s.samples)
        elif s.weight is not None:
            out.append(max(1, round(total * s.weight / wsum)))
        else:
            out.append(n)
    return out


def sample_indices(n: int, count: int, rng: random.Random) -> list[int]:
    if count == n:
        return list(range(n))
    if count < n:
        return sorted(rng.sample(range(n), count))
    return list(range(n)) * (count // n) + sorted(rng.sample(range(n), count % n))


def encode_rows(spec: DatasetSpec, rows: Rows, indices: list[int], cfg: DataConfig, tokenizer: Any,
                render: Any, stats: DataStats) -> list[dict]:
    fmt = FORMATS[spec.format]
    out = []
    for start in range(0, len(indices), CHUNK):
        chunk = indices[start : start + CHUNK]
        wheres = [rows.where[i] for i in chunk]
        items = [fmt(rows.rows[i], spec, w) for i, w in zip(chunk, wheres)]
        if spec.format != "text" and cfg.system_role == "merge_into_first_user":
            items = [merge_system_into_first_user(m) for m in items]  # type: ignore[arg-type]
        if spec.format == "text":
            encs = tokenize_plain(tokenizer, items)  # type: ignore[arg-type]
        else:
            examples = [conversation_examples(render, m, cfg.train_on, cfg.multi_turn, w,  # type: ignore[arg-type]
                                              cfg.train_reasoning)
                        for m, w in zip(items, wheres)]
            stats.split_rows += sum(len(e) > 1 for e in examples)
            stats.expanded += sum(len(e) - 1 for e in examples)
            wheres = [w for e, w in zip(examples, wheres) for _ in e]
            flat = [x for e in examples for x in e]
            encs = tokenize_texts(tokenizer, [t for t, _ in flat], [s for _, s in flat])
        for enc, where in zip(encs, wheres):
            row = finish(enc["input_ids"], enc["spans"], cfg, stats, f"{where} (dataset {spec.path})")
            if row is not None:
                out.append(row)
    return out


def finish(ids: list[int], spans: list[tuple[int, int]], cfg: DataConfig, stats: DataStats, where: str) -> dict | None:
    """Length policy, labels and the zero-trained-tokens rule for one encoded example (spans: trained token ranges)."""
    full_len = len(ids)
    if full_len > cfg.max_length:
        if cfg.length_policy == "drop":
            stats.dropped[f"longer than max_length={cfg.max_length}"] += 1
            return None
        ids = ids[: cfg.max_length]
    labels = [-100] * len(ids)
    trained = 0
    for a, b in spans:
        a, b = max(a, 1), min(b, len(ids))  # the first token has nothing before it to be predicted from
        if b > a:
            labels[a:b] = ids[a:b]
            trained += b - a
    if not trained:
        if cfg.drop_untrained:
            reason = "no trained tokens left after truncation" if full_len > cfg.max_length else "no trained tokens"
            stats.dropped[reason] += 1
            return None
        if full_len > cfg.max_length:
            raise UserError(f"{where}: no trained tokens remain after truncation to max_length={cfg.max_length}; "
                            "raise data.max_length, set data.length_policy: drop, or data.drop_untrained: true")
        raise UserError(f"{where}: the example has no trained tokens (check the format and data.train_on), "
                        "or set data.drop_untrained: true to drop and count such rows")
    stats.truncated += full_len > cfg.max_length
    stats.rows_out += 1
    stats.tokens += len(ids)
    stats.trained_tokens += trained
    stats.lengths.append(len(ids))
    return {"input_ids": ids, "labels": labels}


def encode_specs(specs: list[DatasetSpec], cfg: DataConfig, tokenizer: Any, render: Any,
                 rng: random.Random) -> tuple[list[dict], dict[str, DataStats]]:
    loaded = [read_rows(s) for s in specs]
    counts = mixture_counts(specs, [len(r.rows) for r in loaded])
    examples: list[dict] = []
    per: dict[str, DataStats] = {}
    for spec, rows, count in zip(specs, loaded, counts):
        st = per.setdefault(spec.path, DataStats())
        idx = sample_indices(len(rows.rows), count, rng)
        st.rows_in += len(rows.rows)
        st.repeated += len(idx) - len(set(idx))
        if len(set(idx)) < len(rows.rows):
            st.dropped[NOT_SELECTED] += len(rows.rows) - len(set(idx))
        examples += encode_rows(spec, rows, idx, cfg, tokenizer, render, st)
    for name, st in per.items():  # nothing lost: every row read is in the output or counted with a reason
        if st.rows_in + st.repeated + st.expanded - sum(st.dropped.values()) != st.rows_out:
            raise RuntimeError(f"tunekit bug: row accounting for {name} does not add up: {st.as_dict()}")
    return examples, per


def _empty_error(split: str, per: dict[str, DataStats]) -> UserError:
    reasons = "; ".join(f"{name}: {dict(s.dropped) or 'no rows'}" for name, s in per.items())
    return UserError(f"data: the {split} set is empty after filtering ({reasons}). "
                     "Check data.max_length, data.length_policy and data.train_on.")


def prepare(cfg: DataConfig, tokenizer: Any, template: str | None, seed: int) -> tuple[list, list, dict]:
    """Rows (plain lists) and statistics, without the cache."""
    rng = random.Random(seed)
    render = renderer(tokenizer, template, cfg.chat_template) if template else None
    train, train_per = encode_specs(cfg.train, cfg, tokenizer, render, rng)
    rng.shuffle(train)
    evals, eval_per = encode_specs(cfg.eval, cfg, tokenizer, render, rng) if cfg.eval else ([], {})
    held_out = 0
    if cfg.eval_fraction and train:
        held_out = max(1, int(len(train) * cfg.eval_fraction))
        evals, train = train[:held_out], train[held_out:]
    if not train:
        raise _empty_error("training", train_per)
    if cfg.eval and not evals:
        raise _empty_error("eval", eval_per)
    stats: dict[str, Any] = {"train": split_summary(train_per, cfg.max_length),
                             "eval": split_summary(eval_per, cfg.max_length) if cfg.eval else None,
                             "held_out_for_eval": held_out}
    if cfg.packing:
        train, stats["train"]["packing"] = pack(train, cfg.max_length)
        rng.shuffle(train)
        if evals:
            evals, packing = pack(evals, cfg.max_length)
            if stats["eval"] is not None:
                stats["eval"]["packing"] = packing
    stats["train_rows"], stats["eval_rows"] = len(train), len(evals)
    return train, evals, stats


def build_datasets(cfg: DataConfig, tokenizer: Any, seed: int) -> tuple[Any, Any | None, dict]:
    """Returns (train Dataset, eval Dataset or None, stats dict), from the cache when nothing changed.

    Sets `tokenizer.chat_template` to the template actually used (the pipeline saves the tokenizer with it).
    Preference and RL formats hand off to `tunekit/data/preference.py` (conversational columns for TRL).
    """

    if is_preference_data(cfg):
        return build_preference_datasets(cfg, tokenizer, seed)
    needs_template = any(s.format != "text" for s in [*cfg.train, *cfg.eval])
    template = apply_chat_template_choice(tokenizer, cfg.chat_template, needed=needs_template)
    seed = cfg.data_seed(seed)
    fp = cache.fingerprint(cfg, tokenizer, template if needs_template else None, seed)
    entry = cache.cache_root(cfg) / fp
    with cache.build_lock(entry):
        hit = cache.load(entry)
        if hit is None:
            train, evals, stats = prepare(cfg, tokenizer, template if needs_template else None, seed)
            stats["fingerprint"] = fp
            cache.save(entry, train, evals, stats)
            hit = cache.load(entry)
            assert hit is not None, f"cache entry {entry} was not written"
            hit[2]["cache"] = "built"
        else:
            hit[2]["cache"] = "reused"
    train_ds, eval_ds, stats = hit
    stats["cache_dir"] = str(Path(entry))
    stats["chat_template"] = cfg.chat_template or ("tokenizer" if needs_template else None)
    return train_ds, eval_ds, stats
