"""Build the tokenized train/eval datasets the trainers consume: input_ids + labels (-100 where untrained),
plus `seq_lengths` per row when packed.

sources -> mixture sampling -> format -> chat template + loss mask -> length policy -> shuffle / eval
hold-out -> selection (data.select) -> packing -> cache. Every row read ends up in the output or counted with
its reason.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.data import cache
from tunekit.data.arrow_rows import COLUMNS, JSON_ROW, PACKED, Encoded, RowWriter, write_json_rows
from tunekit.data.encode import Encoder, encode_rows, encode_split
from tunekit.data.packing import bfd_bins, packing_stats
from tunekit.data.preference import (
    check_one_format,
    empty_error,
    encode_pairs,
    is_preference_data,
    select_rows,
    split_stats,
)
from tunekit.data.schema import DataConfig, DatasetSpec, ScoreStep
from tunekit.data.select_score import model_identity, scoring_model
from tunekit.data.select_sft import Provenance, select_examples
from tunekit.data.sources import Rows, read_rows
from tunekit.data.stats import DataStats, check_accounting, split_summary
from tunekit.data.templates import apply_chat_template_choice, renderer
from tunekit.errors import UserError
from tunekit.model.schema import ModelConfig

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


MAPPED_SAMPLE = 1000  # rows looked at for the columns `columns:` names (a typo is absent from every row)


def check_mapped_columns(spec: DatasetSpec, rows: Rows) -> None:
    """Every column `columns:` maps must be in the data: an optional one (alpaca's `input`, a `system`) mapped to a
    misspelt column was silently read as absent from every row, so the text it held was lost."""
    if not spec.columns or not len(rows):
        return
    sample, _ = rows.fetch(list(range(min(len(rows), MAPPED_SAMPLE))))
    found = set().union(*(r.keys() for r in sample))
    for key, col in spec.columns.items():
        if col not in found:
            raise UserError(f"data: `{spec.path}`: columns maps `{key}` to `{col}`, but no row has a `{col}` column "
                            f"(looked at the first {len(sample)}); columns found: {', '.join(sorted(found))}")


def entry_names(specs: list[DatasetSpec], split: str) -> list[str]:
    """The statistics' name of each dataset entry: its path, and where two entries share a path (the same file with
    another `system:` or `samples:`), the path and the entry (`a.jsonl (data.train[1])`), one row each."""
    paths = [s.path for s in specs]
    return [p if paths.count(p) == 1 else f"{p} (data.{split}[{i}])" for i, p in enumerate(paths)]


def encode_specs(specs: list[DatasetSpec], cfg: DataConfig, tokenizer: Any, render: Any, rng: random.Random,
                 workdir: Path, name: str, encode: Encoder = encode_rows,
                 columns: Sequence[str] = COLUMNS) -> tuple[Encoded, dict[str, DataStats], Provenance]:
    """The split's examples (memory-mapped Arrow, in dataset order), statistics per dataset entry, and each
    example's dataset and source row. `encode`/`columns`: what a row becomes (see encode.encode_split)."""
    import numpy as np

    loaded = [read_rows(s) for s in specs]
    for spec, rows in zip(specs, loaded):
        check_mapped_columns(spec, rows)
    counts = mixture_counts(specs, [len(r) for r in loaded])
    indices = [sample_indices(len(rows), count, rng) for rows, count in zip(loaded, counts)]
    files, pieces = encode_split(specs, loaded, indices, cfg, tokenizer, render, workdir, name, encode, columns)
    per: dict[str, DataStats] = {}
    origins = [np.asarray([o for part in parts for o in part.origins], dtype=np.int64) for parts in pieces]
    keys = entry_names(specs, name)
    for key, rows, idx, parts in zip(keys, loaded, indices, pieces):
        st = per.setdefault(key, DataStats())
        st.rows_in += len(rows)
        st.repeated += len(idx) - len(set(idx))
        if len(set(idx)) < len(rows):
            st.dropped[NOT_SELECTED] += len(rows) - len(set(idx))
        for part in parts:
            st.add(part)
    for st in per.values():
        st.origins = []  # kept once, in the provenance
    check_accounting(per)
    owner = np.repeat(np.arange(len(specs), dtype=np.int64), [len(o) for o in origins])
    prov = Provenance(owner, np.concatenate(origins) if origins else np.zeros(0, np.int64), keys)
    return Encoded(files, columns), per, prov


def _empty_error(split: str, per: dict[str, DataStats], selected: bool = False) -> UserError:
    reasons = "; ".join(f"{name}: {dict(s.dropped) or 'no rows'}" for name, s in per.items())
    return UserError(f"data: the {split} set is empty after filtering ({reasons}). "
                     f"Check data.max_length, data.length_policy{', data.select' if selected else ''} and "
                     "data.train_on.")


def _write(enc: Encoded, order: list[int], packing: bool, capacity: int, rng: random.Random | None,
           path: Path) -> tuple[int, dict | None]:
    """Write the examples at `order` to `path`, packed (bins shuffled with `rng` when given) or as they are."""
    writer = RowWriter(path, PACKED if packing else COLUMNS)
    stats = None
    if packing:
        lengths = enc.lengths[order] if order else enc.lengths[:0]
        bins = bfd_bins(lengths.tolist(), capacity)
        stats = packing_stats(int(lengths.sum()), len(order), len(bins), capacity)
        if rng is not None:
            rng.shuffle(bins)
        enc.write_packed([[order[i] for i in b] for b in bins], writer)
    else:
        enc.write(order, writer)
    writer.close()
    return writer.rows, stats


@dataclass(frozen=True)
class Shape:
    """What a build makes of the rows: SFT examples (token ids and labels, packed or not) or preference / RL rows
    (the conversational columns TRL reads). The steps between (mixture, shards, shuffle, hold-out) are shared."""

    encode: Encoder
    columns: tuple[str, ...]
    # (cfg, encoded, provenance, order, per-dataset stats, tokenizer, render, seed, model) -> (order, step records)
    select: Callable[..., tuple[list[int], list[dict]]]
    summary: Callable[[dict, DataConfig, int], dict]  # (per-dataset stats, cfg, rows in the split) -> split stats
    write: Callable[..., tuple[int, dict | None]]  # (encoded, order, cfg, rng or None, path) -> (rows, packing)
    empty: Callable[[str, dict, bool], UserError | None]  # (split, per-dataset stats, selected) -> error, if any


def _sft_select(cfg: DataConfig, enc: Encoded, prov: Provenance, order: list[int], per: dict, tokenizer: Any,
                render: Any, seed: int, model: ModelConfig | None) -> tuple[list[int], list[dict]]:
    return select_examples(cfg, enc, prov, order, per, tokenizer, seed, model)


def _pairs_select(cfg: DataConfig, enc: Encoded, prov: Provenance, order: list[int], per: dict, tokenizer: Any,
                  render: Any, seed: int, model: ModelConfig | None) -> tuple[list[int], list[dict]]:
    return select_rows(cfg, enc, prov, order, per, tokenizer, render, seed, model)


SFT = Shape(encode_rows, COLUMNS, _sft_select, lambda per, cfg, rows: split_summary(per, cfg.max_length),
            lambda enc, order, cfg, rng, path: _write(enc, order, cfg.packing, cfg.max_length, rng, path),
            _empty_error)
PAIRS = Shape(encode_pairs, JSON_ROW, _pairs_select, lambda per, cfg, rows: split_stats(per, rows),
              lambda enc, order, cfg, rng, path: (write_json_rows(enc, order, path), None),
              lambda split, per, selected: empty_error(split, selected))


def _check_not_empty(shape: Shape, cfg: DataConfig, order: list[int], eval_order: list[int], train_per: dict,
                     eval_per: dict) -> None:
    for split, rows, per, selected, given in (("training", order, train_per, bool(cfg.select), True),
                                              ("eval", eval_order, eval_per, False, bool(cfg.eval))):
        err = shape.empty(split, per, selected) if given and not rows else None
        if err is not None:
            raise err


def prepare(cfg: DataConfig, tokenizer: Any, template: str | None, seed: int, out: Path,
            model: ModelConfig | None = None, shape: Shape = SFT) -> dict:
    """Write train.arrow (and eval.arrow) into `out` and return the statistics, without the cache. `model` is the
    recipe's model section: the default scoring model of `data.select` score steps."""
    rng = random.Random(seed)
    render = renderer(tokenizer, template, cfg.chat_template) if template else None
    work = out / "work"
    train, train_per, prov = encode_specs(cfg.train, cfg, tokenizer, render, rng, work, "train", shape.encode,
                                          shape.columns)
    order = list(range(len(train)))
    rng.shuffle(order)
    evals, eval_per, _ = (encode_specs(cfg.eval, cfg, tokenizer, render, rng, work, "eval", shape.encode,
                                       shape.columns) if cfg.eval else (None, {}, None))
    eval_order = list(range(len(evals))) if evals is not None else []
    held_out = 0
    if cfg.eval_fraction and order:
        held_out = max(1, int(len(order) * cfg.eval_fraction))
        evals, eval_order, order = train, order[:held_out], order[held_out:]
    records = None
    if cfg.select:  # after the hold-out: the eval rows are the same with and without a selection
        order, records = shape.select(cfg, train, prov, order, train_per, tokenizer, render, seed, model)
    _check_not_empty(shape, cfg, order, eval_order, train_per, eval_per)
    stats: dict[str, Any] = {"train": shape.summary(train_per, cfg, len(order)),
                             "eval": shape.summary(eval_per, cfg, len(eval_order)) if cfg.eval else None,
                             "held_out_for_eval": held_out}
    if records is not None:
        stats["train"]["select"] = records
    stats["train_rows"], packing = shape.write(train, order, cfg, rng, out / "train.arrow")
    if packing is not None:
        stats["train"]["packing"] = packing
    stats["eval_rows"] = 0
    if eval_order and evals is not None:
        stats["eval_rows"], packing = shape.write(evals, eval_order, cfg, None, out / "eval.arrow")
        if packing is not None and stats["eval"] is not None:
            stats["eval"]["packing"] = packing
    for enc in (train, evals):
        if enc is not None:
            enc.close()
    shutil.rmtree(work, ignore_errors=True)
    return stats


def build_datasets(cfg: DataConfig, tokenizer: Any, seed: int,
                   model: ModelConfig | None = None) -> tuple[Any, Any | None, dict]:
    """Returns (train Dataset, eval Dataset or None, stats dict), from the cache when nothing changed.

    Sets `tokenizer.chat_template` to the template actually used (the pipeline saves the tokenizer with it).
    Preference and RL formats build the conversational columns TRL reads (`tunekit/data/preference.py`).
    `model` (the recipe's model section) is the default scoring model of `data.select` score steps.
    """
    pairs = check_one_format(cfg) if is_preference_data(cfg) else None
    needs_template = pairs is not None or any(s.format != "text" for s in [*cfg.train, *cfg.eval])
    template = apply_chat_template_choice(tokenizer, cfg.chat_template, needs_template, cfg.chat_template_kwargs)
    seed = cfg.data_seed(seed)
    scorers = [model_identity(scoring_model(s, model, f"data.select[{i}]")) for i, s in enumerate(cfg.select)
               if isinstance(s, ScoreStep)]
    fp = cache.fingerprint(cfg, tokenizer, template if needs_template else None, seed, scorers)
    entry = cache.cache_root(cfg) / fp
    with cache.build_lock(entry):
        hit = cache.load(entry)
        if hit is None:
            with cache.building(entry) as tmp:
                stats = prepare(cfg, tokenizer, template if needs_template else None, seed, tmp, model,
                                SFT if pairs is None else PAIRS)
                stats["fingerprint"] = fp
                cache.write_stats(tmp, stats)
            hit = cache.load(entry)
            assert hit is not None, f"cache entry {entry} was not written"
            hit[2]["cache"] = "built"
        else:
            hit[2]["cache"] = "reused"
    train_ds, eval_ds, stats = hit
    stats["cache_dir"] = str(Path(entry))
    stats["chat_template"] = cfg.chat_template or ("tokenizer" if needs_template else None)
    if pairs is not None:  # the statistics' keys in the order preference runs have always written them
        for key in ("held_out_for_eval", "chat_template"):
            stats[key] = stats.pop(key)
        stats["format"] = pairs
    return train_ds, eval_ds, stats
