"""Tokenized rows on disk: Arrow IPC stream files of int32 list columns (the format `datasets.Dataset.from_file`
memory-maps), written a batch at a time and read back memory-mapped, so no step holds a split in Python lists.

`RowWriter` appends rows (or ready Arrow arrays); `Encoded` indexes the files of one split in order and gathers
rows by index (for the shuffle, the eval hold-out and packing), reading only the rows of one batch.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BATCH = 1024  # rows per Arrow record batch
COLUMNS = ("input_ids", "labels")
PACKED = (*COLUMNS, "seq_lengths")


def _int_list() -> Any:
    import pyarrow as pa

    return pa.list_(pa.int32())


class RowWriter:
    """Rows of int lists into one Arrow stream file, `BATCH` rows per record batch."""

    def __init__(self, path: Path, columns: Sequence[str] = COLUMNS) -> None:
        import pyarrow as pa

        self.schema = pa.schema([(c, _int_list()) for c in columns])
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._buf: dict[str, list] = {c: [] for c in columns}
        self.rows = 0

    def add(self, row: dict[str, list[int]]) -> None:
        for c, values in self._buf.items():
            values.append(row[c])
        if len(self._buf[COLUMNS[0]]) >= BATCH:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        n = len(next(iter(self._buf.values())))
        if n:
            self._writer.write_batch(pa.record_batch([pa.array(v, type=_int_list()) for v in self._buf.values()],
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


class Encoded:
    """The rows of several RowWriter files, in file order, addressed by a global row index.

    Only the row offsets are held in memory; a row's tokens are read with `os.pread` when it is gathered. (A
    memory map would do, but the kernel maps 64 KB around every touched row, so a gather of rows spread over
    the whole split would count most of the files in the process's resident memory.)
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        import numpy as np

        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 (held for the gathers; closed by close())
        self._cols: dict[str, list[tuple[Any, int, int]]] = {c: [] for c in COLUMNS}
        sizes: list[int] = []
        for k, f in enumerate(self._files):
            if os.fstat(f.fileno()).st_size:
                self._index(k, f, sizes)
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        first = self._cols[COLUMNS[0]]
        self.lengths = (np.concatenate([np.diff(o) for o, _, _ in first]).astype(np.int64) if first
                        else np.zeros(0, dtype=np.int64))

    def _index(self, k: int, f: Any, sizes: list[int]) -> None:
        """Each record batch's offsets (copied) and the file position of its values, per column."""
        import pyarrow as pa

        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            whole = pa.py_buffer(m)
            for batch in pa.ipc.open_stream(pa.BufferReader(whole)).read_all().to_batches():
                for c in COLUMNS:
                    arr = batch.column(c)
                    values = arr.values
                    pos = values.buffers()[1].address - whole.address + values.offset * 4
                    self._cols[c].append((arr.offsets.to_numpy().copy(), k, pos))
                sizes.append(batch.num_rows)
                del batch, arr, values
            del whole

    def __len__(self) -> int:
        return int(self.starts[-1])

    def close(self) -> None:
        for f in self._files:
            f.close()

    def _values(self, column: str, idx: Any) -> Any:
        import numpy as np

        batch = np.searchsorted(self.starts, idx, side="right") - 1
        local = idx - self.starts[batch]
        chunks = self._cols[column]
        fds = [f.fileno() for f in self._files]
        pieces = []
        for b, i in zip(batch.tolist(), local.tolist()):
            offsets, k, pos = chunks[b]
            a, z = int(offsets[i]), int(offsets[i + 1])
            pieces.append(os.pread(fds[k], (z - a) * 4, pos + a * 4))
        return np.frombuffer(b"".join(pieces), dtype=np.int32)

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
