"""Rows -> tokenized examples written to Arrow files, in batches, on `data.num_proc` processes.

The selected rows of a split (every dataset's sampled indices, in dataset order) are cut into `num_proc`
contiguous shards. Each process reads its rows a batch at a time, formats, renders, tokenizes and masks them
and writes the examples to its own Arrow file; the files read back in shard order are the examples in the order
one process would have written them, with the same per-row results. Each shard returns its statistics per
dataset, merged in order, and the first error (in row order) is the one raised, naming the file and row.

Processes are forked (the tokenizer and template are inherited, nothing is pickled but statistics); where fork
is not available the build runs in one process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tunekit.data.arrow_rows import COLUMNS, RowWriter
from tunekit.data.formats import FORMATS
from tunekit.data.masking import (
    conversation_examples,
    tokenize_plain,
    tokenize_texts,
    without_text_beside_calls,
)
from tunekit.data.messages import merge_system_into_first_user
from tunekit.data.schema import DataConfig, DatasetSpec
from tunekit.data.sources import Rows
from tunekit.data.stats import DataStats
from tunekit.errors import UserError

CHUNK = 2048  # rows tokenized per batch call
MIN_SHARD = 256  # rows; fewer per process and the build stays in one process

# One job per split build, set before forking so that workers inherit it: (specs, rows, indices, cfg, tokenizer,
# render, shard plans, output files, the encoder and its columns).
_JOB: dict[str, Any] = {}


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


def encode_rows(spec: DatasetSpec, rows: Rows, indices: list[int], cfg: DataConfig, tokenizer: Any,
                render: Any, stats: DataStats, writer: RowWriter) -> None:
    """Encode the rows at `indices`, `CHUNK` at a time, appending the examples kept to `writer`."""
    fmt = FORMATS[spec.format]
    for start in range(0, len(indices), CHUNK):
        chunk = indices[start : start + CHUNK]
        raw, wheres = rows.fetch(chunk)
        origins = [i << 16 for i in chunk]
        items = [fmt(row, spec, w) for row, w in zip(raw, wheres)]
        del raw
        if spec.format != "text" and cfg.system_role == "merge_into_first_user":
            items = [merge_system_into_first_user(m) for m in items]  # type: ignore[arg-type]
        if spec.format != "text" and cfg.drop_text_beside_tool_calls:
            items = [without_text_beside_calls(m) for m in items]  # type: ignore[arg-type]
        if spec.format == "text":
            encs = tokenize_plain(tokenizer, items)  # type: ignore[arg-type]
        else:
            examples = [conversation_examples(render, m, cfg.train_on, cfg.multi_turn, w,  # type: ignore[arg-type]
                                              cfg.train_reasoning)
                        for m, w in zip(items, wheres)]
            stats.split_rows += sum(len(e) > 1 for e in examples)
            stats.expanded += sum(len(e) - 1 for e in examples)
            wheres = [w for e, w in zip(examples, wheres) for _ in e]
            origins = [o | min(k, 0xFFFF) for e, o in zip(examples, origins) for k in range(len(e))]
            flat = [x for e in examples for x in e]
            encs = tokenize_texts(tokenizer, [t for t, _ in flat], [s for _, s in flat])
        for enc, where, origin in zip(encs, wheres, origins):
            row = finish(enc["input_ids"], enc["spans"], cfg, stats, f"{where} (dataset {spec.path})")
            if row is not None:
                writer.add(row)
                stats.origins.append(origin)


def shard_plans(counts: list[int], shards: int) -> list[list[tuple[int, int, int]]]:
    """Cut the selected rows (counts per dataset, in order) into `shards` contiguous runs of (dataset, start,
    stop) pieces of about equal size."""
    total = sum(counts)
    bounds = [total * k // shards for k in range(shards + 1)]
    plans: list[list[tuple[int, int, int]]] = []
    for lo, hi in zip(bounds, bounds[1:]):
        plan, base = [], 0
        for d, n in enumerate(counts):
            a, b = max(lo, base), min(hi, base + n)
            if a < b:
                plan.append((d, a - base, b - base))
            base += n
        plans.append(plan)
    return plans


def _run_shard(k: int) -> tuple[str, Any]:
    """Encode shard k into its file; ("ok", [DataStats per piece]) or ("error", the exception)."""
    j = _JOB
    writer = RowWriter(j["files"][k], j["columns"])
    out = []
    try:
        for d, a, b in j["plans"][k]:
            st = DataStats()
            j["encode"](j["specs"][d], j["rows"][d], j["indices"][d][a:b], j["cfg"], j["tokenizer"], j["render"],
                        st, writer)
            out.append(st)
    except Exception as e:  # returned, so the parent raises the first error in row order
        return "error", e
    finally:
        writer.close()
    return "ok", out


def default_num_proc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


Encoder = Callable[[DatasetSpec, Rows, list[int], DataConfig, Any, Any, DataStats, RowWriter], None]


def encode_split(specs: list[DatasetSpec], loaded: list[Rows], indices: list[list[int]], cfg: DataConfig,
                 tokenizer: Any, render: Any, workdir: Path, name: str, encode: Encoder = encode_rows,
                 columns: Sequence[str] = COLUMNS) -> tuple[list[Path], list[list[DataStats]]]:
    """The split's examples in Arrow files (in order) and, per dataset, the statistics of its pieces in order.
    `encode` writes the rows at some indices of one dataset (SFT examples by default; preference.encode_pairs
    writes preference / RL rows) into files of `columns`."""
    counts = [len(i) for i in indices]
    procs = cfg.num_proc or default_num_proc()
    if "fork" not in multiprocessing.get_all_start_methods():
        procs = 1
    shards = max(1, min(procs, sum(counts) // MIN_SHARD))
    plans = shard_plans(counts, shards)
    workdir.mkdir(parents=True, exist_ok=True)
    files = [workdir / f"{name}-{k:05d}.arrow" for k in range(shards)]
    _JOB.update(specs=specs, rows=loaded, indices=indices, cfg=cfg, tokenizer=tokenizer, render=render, plans=plans,
                files=files, encode=encode, columns=columns)
    try:
        if shards == 1:
            results = [_run_shard(0)]
        else:
            # A worker that dies (out of memory) raises BrokenProcessPool here rather than hanging the build.
            with ProcessPoolExecutor(shards, mp_context=multiprocessing.get_context("fork")) as pool:
                results = list(pool.map(_run_shard, range(shards)))
    finally:
        _JOB.clear()
    per: list[list[DataStats]] = [[] for _ in specs]
    for (status, value), plan in zip(results, plans):
        if status == "error":
            raise value
        for (d, _, _), st in zip(plan, value):
            per[d].append(st)
    return files, per
