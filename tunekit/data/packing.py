"""Best-fit-decreasing packing of tokenized examples into rows of at most `max_length` tokens.

A packed row holds whole examples only (never split) and a `seq_lengths` column with each example's length.
TRL's `DataCollatorForLanguageModeling(padding_free=True)` turns `seq_lengths` into position ids that restart
at 0 for each example, and passes `cu_seq_lens` to varlen (flash) attention; with sdpa/eager, transformers
derives a block-diagonal mask from the restarting position ids. Either way attention never crosses example
boundaries (tests/unit/test_packing.py checks the loss parity against unpacked examples).
"""

from __future__ import annotations

import bisect


def bfd_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total <= capacity, best fit, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    open_bins: list[tuple[int, int]] = []  # sorted (remaining capacity, bin id) of bins with room left
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than the packing capacity {capacity}")
        k = bisect.bisect_left(open_bins, (n, -1))
        if k < len(open_bins):
            room, b = open_bins.pop(k)  # the fullest bin that still fits the example
            bins[b].append(i)
        else:
            room, b = capacity, len(bins)
            bins.append([i])
        if room - n > 0:
            bisect.insort(open_bins, (room - n, b))
    return bins


def pack(rows: list[dict], capacity: int) -> tuple[list[dict], dict]:
    """Packed rows (input_ids, labels, seq_lengths) and packing statistics."""
    bins = bfd_bins([len(r["input_ids"]) for r in rows], capacity)
    packed = []
    for b in bins:
        ids: list[int] = []
        labels: list[int] = []
        for i in b:
            ids += rows[i]["input_ids"]
            labels += rows[i]["labels"]
        packed.append({"input_ids": ids, "labels": labels, "seq_lengths": [len(rows[i]["input_ids"]) for i in b]})
    return packed, packing_stats(sum(len(r["input_ids"]) for r in rows), len(rows), len(packed), capacity)


def packing_stats(tokens: int, examples: int, rows: int, capacity: int) -> dict:
    return {"examples": examples, "rows": rows, "capacity": capacity,
            "efficiency": round(tokens / (rows * capacity), 4) if rows else 0.0}


def unpack(row: dict) -> list[dict]:
    """Split a packed row back into its examples (for `--show` and tests)."""
    lengths = row.get("seq_lengths") or [len(row["input_ids"])]
    out, start = [], 0
    for n in lengths:
        out.append({"input_ids": row["input_ids"][start : start + n], "labels": row["labels"][start : start + n]})
        start += n
    return out
