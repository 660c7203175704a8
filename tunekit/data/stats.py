"""Preprocessing statistics: every row read is either in the output or counted with its reason.

Rows and examples: rows_in + repeated + expanded = examples; examples = rows_out + dropped. A conversation
split into one example per assistant turn (data.multi_turn) adds `expanded` examples beyond its row."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class DataStats:
    rows_in: int = 0
    rows_out: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    repeated: int = 0  # extra copies added by `samples`/`weight` upsampling
    split_rows: int = 0  # conversations trained one assistant turn per example (data.multi_turn)
    expanded: int = 0  # the extra examples those splits added
    lengths: list[int] = field(default_factory=list, repr=False)
    # Per kept example, its source: row index << 16 | its example number within the row (data.multi_turn), so the
    # copies `samples`/`weight` upsampling adds share one origin (data.select dedup keeps or removes them together).
    origins: list[int] = field(default_factory=list, repr=False)

    def add(self, other: DataStats) -> None:
        for name in ("rows_in", "rows_out", "tokens", "trained_tokens", "truncated", "repeated", "split_rows",
                     "expanded"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dropped.update(other.dropped)
        self.lengths += other.lengths
        self.origins += other.origins

    def as_dict(self) -> dict:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "tokens": self.tokens,
                "trained_tokens": self.trained_tokens, "truncated": self.truncated, "dropped": dict(self.dropped),
                "repeated": self.repeated, "split_rows": self.split_rows, "expanded": self.expanded}


def histogram(lengths: list[int], max_length: int, bins: int = 8) -> list[dict]:
    """Example-length histogram over [0, max_length] in equal-width bins."""
    width = max(1, -(-max_length // bins))
    counts = Counter(min(n // width, bins - 1) for n in lengths)
    return [{"from": i * width, "to": min((i + 1) * width, max_length), "rows": counts.get(i, 0)} for i in range(bins)]


def split_summary(per_dataset: dict[str, DataStats], max_length: int) -> dict:
    total = DataStats()
    for s in per_dataset.values():
        total.add(s)
    return {**total.as_dict(), "datasets": {k: v.as_dict() for k, v in per_dataset.items()},
            "length_histogram": histogram(total.lengths, max_length)}


def check_accounting(per_dataset: dict[str, DataStats]) -> None:
    """Nothing lost: every row read is in the output or counted with a reason."""
    for key, st in per_dataset.items():
        if st.rows_in + st.repeated + st.expanded - sum(st.dropped.values()) != st.rows_out:
            raise RuntimeError(f"tunekit bug: row accounting for {key} does not add up: {st.as_dict()}")


def example_lengths(ds: object, limit: int = 10_000) -> list[int]:
    """Token lengths of the examples in the first `limit` rows of a tokenized dataset: a packed row's `seq_lengths`,
    else each row's `input_ids` (read as Arrow list lengths, no ids copied). Empty for datasets without
    `input_ids` (preference pairs, RL prompts)."""
    import pyarrow.compute as pc

    columns = getattr(ds, "column_names", None) or []
    if "input_ids" not in columns or not hasattr(ds, "select"):
        return []
    head = ds.select(range(min(limit, len(ds)))).with_format("arrow")  # type: ignore[attr-defined]
    if "seq_lengths" in columns:
        return pc.list_flatten(head["seq_lengths"]).to_pylist()
    return pc.list_value_length(head["input_ids"]).to_pylist()
