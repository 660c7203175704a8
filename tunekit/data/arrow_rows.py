"""Tokenized rows on disk: Arrow IPC stream files of int32 list columns (the format `datasets.Dataset.from_file`
memory-maps), written a batch at a time and read back memory-mapped, so no step holds a split in Python lists.

`RowWriter` appends rows (or ready Arrow arrays); `Encoded` indexes the files of one split in order and gathers
rows by index (for the shuffle, the eval hold-out and packing), reading only the rows of one batch.

Preference, KTO and ReFT rows (nested messages, which TRL renders and tokenizes itself) travel the same way as one
binary `row` column of JSON text (`JSON_ROW`); `write_json_rows` turns them into the typed Arrow columns that
`datasets.Dataset.from_list` would have made of the same rows.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunekit.errors import UserError

BATCH = 1024  # rows per Arrow record batch
COLUMNS = ("input_ids", "labels")
PACKED = (*COLUMNS, "seq_lengths")
JSON_ROW = ("row",)  # one row as UTF-8 JSON text (bytes)


def _int_list() -> Any:
    import pyarrow as pa

    return pa.list_(pa.int32())


def _type(column: str) -> Any:
    import pyarrow as pa

    return pa.binary() if column in JSON_ROW else _int_list()


def _width(column: str) -> int:
    """Bytes per value of a column's data buffer."""
    return 1 if column in JSON_ROW else 4


class RowWriter:
    """Rows of int lists into one Arrow stream file, `BATCH` rows per record batch."""

    def __init__(self, path: Path, columns: Sequence[str] = COLUMNS) -> None:
        import pyarrow as pa

        self.schema = pa.schema([(c, _type(c)) for c in columns])
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._buf: dict[str, list] = {c: [] for c in columns}
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        for c, values in self._buf.items():
            values.append(row[c])
        if len(next(iter(self._buf.values()))) >= BATCH:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        n = len(next(iter(self._buf.values())))
        if n:
            self._writer.write_batch(pa.record_batch([pa.array(v, type=_type(c)) for c, v in self._buf.items()],
                                                     schema=self.schema))
            self.rows += n
            self._buf = {c: [] for c in self._buf}

    def write_arrays(self, arrays: list[Any]) -> None:
        import pyarrow as pa

        self.flush()
        self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
        self.rows += len(arrays[0])

    def close(self) -> None:
        self.flush()
        self._writer.close()
        self._sink.close()


def _list_array(lengths: Any, values: Any) -> Any:
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


def _locate(column: str, arr: Any) -> tuple[Any, int]:
    """A column's row offsets (copied) and the address its values start at: a list array's child values (at their
    offset), or a binary array's data buffer (its offsets point into it)."""
    import numpy as np

    if column in JSON_ROW:
        _, offsets, data = arr.buffers()
        starts = np.frombuffer(offsets, dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1].copy()
        return starts, (data.address if data is not None else offsets.address)
    values = arr.values
    return arr.offsets.to_numpy().copy(), values.buffers()[1].address + values.offset * 4


class Encoded:
    """The rows of several RowWriter files, in file order, addressed by a global row index.

    Only the row offsets are held in memory; a row's tokens are read with `os.pread` when it is gathered. (A
    memory map would do, but the kernel maps 64 KB around every touched row, so a gather of rows spread over
    the whole split would count most of the files in the process's resident memory.)
    """

    def __init__(self, paths: Sequence[Path], columns: Sequence[str] = COLUMNS) -> None:
        import numpy as np

        self.columns = tuple(columns)
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 (held for the gathers; closed by close())
        self._cols: dict[str, list[tuple[Any, int, int]]] = {c: [] for c in self.columns}
        sizes: list[int] = []
        for k, f in enumerate(self._files):
            if os.fstat(f.fileno()).st_size:
                self._index(k, f, sizes)
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        first = self._cols[self.columns[0]]
        self.lengths = (np.concatenate([np.diff(o) for o, _, _ in first]).astype(np.int64) if first
                        else np.zeros(0, dtype=np.int64))

    def _index(self, k: int, f: Any, sizes: list[int]) -> None:
        """Each record batch's offsets (copied) and the file position of its values, per column."""
        import pyarrow as pa

        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            whole = pa.py_buffer(m)
            for batch in pa.ipc.open_stream(pa.BufferReader(whole)).read_all().to_batches():
                for c in self.columns:
                    offsets, address = _locate(c, batch.column(c))
                    self._cols[c].append((offsets, k, address - whole.address))
                sizes.append(batch.num_rows)
                del batch
            del whole

    def __len__(self) -> int:
        return int(self.starts[-1])

    def close(self) -> None:
        for f in self._files:
            f.close()

    def _pieces(self, column: str, idx: Any) -> list[bytes]:
        """The bytes of each row at `idx` in `column`."""
        import numpy as np

        batch = np.searchsorted(self.starts, idx, side="right") - 1
        local = idx - self.starts[batch]
        chunks = self._cols[column]
        fds = [f.fileno() for f in self._files]
        width = _width(column)
        pieces = []
        for b, i in zip(batch.tolist(), local.tolist()):
            offsets, k, pos = chunks[b]
            a, z = int(offsets[i]), int(offsets[i + 1])
            pieces.append(os.pread(fds[k], (z - a) * width, pos + a * width))
        return pieces

    def _values(self, column: str, idx: Any) -> Any:
        import numpy as np

        return np.frombuffer(b"".join(self._pieces(column, idx)), dtype=np.int32)

    def json_rows(self, idx: Any) -> list[Any]:
        """The JSON rows (`JSON_ROW` files) at `idx` (global indices), parsed."""
        import numpy as np

        return [json.loads(p) for p in self._pieces(JSON_ROW[0], np.asarray(idx, dtype=np.int64))]

    def gather(self, idx: Any, columns: Sequence[str] = COLUMNS) -> list[list[Any]]:
        """Per column, the rows at `idx` (global indices) as numpy int32 arrays."""
        import numpy as np

        idx = np.asarray(idx, dtype=np.int64)
        bounds = np.cumsum(self.lengths[idx])[:-1]
        return [np.split(self._values(c, idx), bounds) if len(idx) else [] for c in columns]

    def write(self, order: Sequence[int], writer: RowWriter) -> None:
        """The rows at `order` (global indices), in that order."""
        import numpy as np

        order = np.asarray(order, dtype=np.int64)
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            writer.write_arrays([_list_array(self.lengths[idx], self._values(c, idx)) for c in COLUMNS])

    def write_packed(self, bins: Sequence[Sequence[int]], writer: RowWriter) -> None:
        """One row per bin: its examples' tokens concatenated in bin order, and `seq_lengths`."""
        import numpy as np

        for start in range(0, len(bins), BATCH):
            group = bins[start : start + BATCH]
            flat = np.fromiter((i for b in group for i in b), dtype=np.int64)
            sizes = np.fromiter((len(b) for b in group), dtype=np.int64, count=len(group))
            lengths = self.lengths[flat]
            totals = np.add.reduceat(lengths, np.concatenate([[0], np.cumsum(sizes)[:-1]]))
            writer.write_arrays([*(_list_array(totals, self._values(c, flat)) for c in COLUMNS),
                                 _list_array(sizes, lengths)])


def merge_types(a: Any, b: Any, column: str) -> Any:
    """The Arrow type pyarrow infers for values of types `a` then `b` in one column: struct fields in order of first
    appearance, null giving way to any type, int widened to float (what `Dataset.from_list` infers over all rows)."""
    import pyarrow as pa

    t = pa.types
    if a == b or t.is_null(b):
        return a
    if t.is_null(a):
        return b
    if t.is_struct(a) and t.is_struct(b):
        fields = {f.name: f.type for f in a}
        for f in b:
            fields[f.name] = merge_types(fields[f.name], f.type, f"{column}.{f.name}") if f.name in fields else f.type
        return pa.struct(list(fields.items()))
    if t.is_list(a) and t.is_list(b):
        return pa.list_(merge_types(a.value_type, b.value_type, column))
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    raise UserError(f"data: `{column}` holds {a} values in some rows and {b} in others; give it one type in every row")


def write_json_rows(enc: Encoded, order: Sequence[int], path: Path) -> int:
    """Write the JSON rows at `order` to `path` as typed Arrow columns (those of `Dataset.from_list` over the same
    rows, in this order, with a column for every key of any row: an optional one, e.g. `tools`, is null where a row
    lacks it): one pass infers each batch's types and merges them, a second writes. Returns the rows."""
    import numpy as np
    import pyarrow as pa

    order = np.asarray(order, dtype=np.int64)
    types: dict[str, Any] = {}
    for start in range(0, len(order), BATCH):
        rows = enc.json_rows(order[start : start + BATCH])
        for c in dict.fromkeys([*types, *(k for r in rows for k in r)]):  # a key absent from a row is null there
            got = pa.array([r.get(c) for r in rows]).type
            types[c] = merge_types(types[c], got, c) if c in types else got
    schema = pa.schema(list(types.items()))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, len(order), BATCH):
            rows = enc.json_rows(order[start : start + BATCH])
            writer.write_batch(pa.record_batch([pa.array([r.get(c) for r in rows], type=types[c]) for c in types],
                                               schema=schema))
    return len(order)
