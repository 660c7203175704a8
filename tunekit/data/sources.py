"""Read dataset rows from files, globs, saved datasets or the hub, naming the file and line of anything malformed.

JSON Lines and JSON are parsed by `source_files` (so a bad line is reported with its line number; compressed files
and a leading byte-order mark are read there too); CSV, Parquet and Arrow files, `save_to_disk` directories and hub
datasets go through the real `datasets` loaders. Hub datasets (with a network) and CSV/Parquet/Arrow files of
`STREAM_BYTES` or more are read with `load_dataset(..., streaming=True)` (`read_stream`: one call, the hub passing
its name, a local file the builder of its type), in batches. Dataset options that cannot apply to a source
(`field:` on anything but a .json file, `split:` on a saved single Dataset) are errors, not ignored.
"""

from __future__ import annotations

import bisect
import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from tunekit.data.schema import ROW_KEYS
from tunekit.data.source_files import (
    JsonlPart,
    check_source_file,
    check_split,
    csv_header,
    field_error,
    file_type,
    is_arrow_ipc_file,
    read_json,
    read_jsonl,
    saved_layout,
)
from tunekit.errors import UserError
from tunekit.paths import asset

ASSETS_DATA = asset("data")
HUB = "hub:"
STREAM_BYTES = 256 * 2**20  # local CSV/Parquet/Arrow files from this size on are streamed, not loaded whole
BUILDERS = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}  # the `datasets` builder of each file type
STREAM_BATCH = 1024  # rows per batch read from a stream


class Rows:
    """The rows of one dataset spec, with where each came from (for error messages), read on demand.

    A JSON Lines file keeps only each row's byte offset and line number (it is parsed once up front, so a
    malformed line is reported before anything is built); CSV/Parquet/Arrow files, saved datasets and hub
    datasets stay Arrow tables; a `.json` file (one document) is held as its parsed rows. `fetch` returns
    the rows asked for, so a build holds a batch of rows at a time, not the dataset.
    """

    def __init__(self, name: str, rows: list[dict] | None = None, where: list[str] | None = None) -> None:
        self.name = name
        self.parts: list[Any] = []
        if rows is not None:
            self.parts.append(ListPart(rows, where or []))

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def add(self, other: Rows) -> None:
        self.parts += other.parts

    def fetch(self, indices: list[int]) -> tuple[list[dict], list[str]]:
        """The rows at these indices (any order, repeats allowed) and where each came from."""
        starts = list(accumulate((len(p) for p in self.parts), initial=0))
        rows: list[dict] = [{}] * len(indices)
        where = [""] * len(indices)
        by_part: dict[int, list[int]] = {}
        for k, i in enumerate(indices):
            by_part.setdefault(bisect.bisect_right(starts, i) - 1, []).append(k)
        for p, ks in by_part.items():
            got, at = self.parts[p].fetch([indices[k] - starts[p] for k in ks])
            for k, r, w in zip(ks, got, at):
                rows[k], where[k] = r, w
        return rows, where

    @property
    def rows(self) -> list[dict]:
        return self.fetch(list(range(len(self))))[0]

    @property
    def where(self) -> list[str]:
        return self.fetch(list(range(len(self))))[1]


@dataclass
class ListPart:
    rows: list[dict]
    where: list[str]

    def __len__(self) -> int:
        return len(self.rows)

    def fetch(self, local: list[int]) -> tuple[list[dict], list[str]]:
        return [self.rows[i] for i in local], [self.where[i] for i in local]


@dataclass
class DatasetPart:
    """An Arrow-backed `datasets.Dataset` (memory-mapped where `datasets` maps it); rows converted when fetched."""

    ds: Any
    name: str

    def __len__(self) -> int:
        return len(self.ds)

    def fetch(self, local: list[int]) -> tuple[list[dict], list[str]]:
        if not local:
            return [], []
        cols = self.ds[local]
        rows = [dict(zip(cols, values)) for values in zip(*cols.values())] if cols else [{} for _ in local]
        return rows, [f"{self.name}: row {i + 1}" for i in local]


@dataclass
class StreamPart:
    """The rows of a `load_dataset(..., streaming=True)` dataset, read in order a batch at a time: counted by one
    pass (the mixture and the shards need the length), then fetched by moving a cursor forward, which restarts
    from the first row when an earlier row is asked for (upsampled copies) or in another (forked) process."""

    open: Callable[[], Any]  # -> IterableDataset
    name: str
    _rows: int | None = None
    _cursor: tuple | None = None  # (pid, batch iterator, index of the batch's first row, the batch as rows)

    def __len__(self) -> int:
        if self._rows is None:
            self._rows = sum(t.num_rows for t in self.open().with_format("arrow").iter(batch_size=STREAM_BATCH))
        return self._rows

    def _batch_with(self, i: int) -> tuple[list[dict], int]:
        """The batch holding row i, and the index of its first row."""
        pid, it, start, batch = self._cursor or (None, None, 0, [])
        if pid != os.getpid() or i < start:
            pid, it, start, batch = os.getpid(), iter(self.open().iter(batch_size=STREAM_BATCH)), 0, []
        while i >= start + len(batch):
            start += len(batch)
            cols = next(it, None)
            if cols is None:
                raise UserError(f"{self.name}: row {i + 1} is gone: the stream ended after {start} rows (it had "
                                f"{self._rows} when counted; did the source change during the build?)")
            batch = [dict(zip(cols, values)) for values in zip(*cols.values())] if cols else []
        self._cursor = (pid, it, start, batch)
        return batch, start

    def fetch(self, local: list[int]) -> tuple[list[dict], list[str]]:
        rows = []
        for i in local:
            batch, start = self._batch_with(i)
            rows.append(batch[i - start])
        return rows, [f"{self.name}: row {i + 1}" for i in local]


def resolve_path(path: str) -> Path:
    if path.startswith("builtin:"):
        p = ASSETS_DATA / path[len("builtin:") :]
        if not p.resolve().is_relative_to(ASSETS_DATA.resolve()):
            raise UserError(f"data: `{path}` points outside tunekit's shipped data; `builtin:` names only files "
                            "shipped with tunekit (use a plain path for your own files)")
        if not p.exists():
            shipped = sorted(str(f.relative_to(ASSETS_DATA)) for f in ASSETS_DATA.rglob("*.jsonl"))
            raise UserError(f"data: no shipped dataset `{path}`; shipped: {', '.join('builtin:' + s for s in shipped)}")
        return p
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data: file not found: {path} (relative paths resolve against {Path.cwd()})")
    return p


def is_glob(path: str) -> bool:
    """A pattern to expand; a path that exists is the file (or directory) it names, even with `[`, `*` or `?` in
    its name (`alpaca[v2].jsonl`)."""
    return any(c in path for c in "*?[") and not Path(path).expanduser().exists()


def local_files(path: str) -> list[Path]:
    """The files behind a local path or glob (a saved-dataset directory counts as its files)."""
    if path.startswith(HUB):
        return []
    if is_glob(path):
        # one entry per file: `**` also walks folders reached through symlinks, which may reach a file again
        found = {os.path.realpath(p): Path(p) for p in sorted(glob.glob(str(Path(path).expanduser()), recursive=True))
                 if Path(p).is_file()}
        files = sorted(found.values())
        if not files:
            raise UserError(f"data: the glob `{path}` matches no files (relative to {Path.cwd()})")
        return files
    p = resolve_path(path)
    return sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]


def _one_part(part: Any, name: str) -> Rows:
    out = Rows(name)
    out.parts.append(part)
    return out


def _from_dataset(ds: object, name: str) -> Rows:
    return _one_part(DatasetPart(ds, name), name)


# Every CSV cell is text: pandas' default missing-value strings (`NA`, `N/A`, `null`, `None`, `nan`, `#N/A`, ...)
# stay the text they are, and an empty cell is the empty string "" (as `""` in JSON: an optional column left empty
# adds nothing), streamed or not.
CSV_OPTIONS = {"na_filter": False}


def _csv_string_features(path: Path) -> object:
    """CSV cells have no types; read every column as text (so `2` stays the string "2")."""
    from datasets import Features, Value

    return Features({name: Value("string") for name in csv_header(path)})


def _load_file(path: Path, suffix: str) -> object:
    """A CSV, Parquet or Arrow file through the `datasets` loaders, in memory (an Arrow IPC file memory-mapped)."""
    from datasets import Dataset

    if suffix == ".csv":  # compressed CSV: `datasets` decompresses it by its suffix
        return Dataset.from_csv(str(path), keep_in_memory=True, features=_csv_string_features(path), **CSV_OPTIONS)
    if suffix == ".parquet":
        return Dataset.from_parquet(str(path), keep_in_memory=True)
    if not is_arrow_ipc_file(path):
        return Dataset.from_file(str(path), in_memory=True)
    import pyarrow as pa
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable(pa.ipc.open_file(pa.memory_map(str(path))).read_all()))


def read_file(path: Path, field: str | None = None, row_keys: frozenset[str] = frozenset()) -> Rows:
    suffix = check_source_file(path, field)
    if suffix == ".jsonl":
        return _one_part(read_jsonl(path), str(path))
    if suffix == ".json":
        got = read_json(path, field, row_keys)
        if isinstance(got, JsonlPart):
            return _one_part(got, str(path))
        return Rows(str(path), got, [f"{path}: row {i + 1}" for i in range(len(got))])
    what = f"{suffix[1:]} ({file_type(path)[1]}-compressed)" if file_type(path)[1] else suffix[1:]
    if path.stat().st_size >= STREAM_BYTES and not (suffix == ".arrow" and is_arrow_ipc_file(path)):
        extra = {"features": _csv_string_features(path), **CSV_OPTIONS} if suffix == ".csv" else {}
        return read_stream(BUILDERS[suffix], str(path), f"{path}: could not read it as {what}",
                           data_files=[str(path)], split="train", **extra)
    try:
        ds = _load_file(path, suffix)
    except UserError:
        raise
    except Exception as e:  # the loaders raise many types; name the file and the reason
        raise UserError(f"{path}: could not read it as {what}: {e.__class__.__name__}: {e}") from None
    return _from_dataset(ds, str(path))


def _check_options(spec: Any, files: list[Path]) -> None:
    """`field:` and `split:` where they cannot apply (checked by `tunekit validate`, before any row is read), and
    files of a type tunekit does not read."""
    path, field = spec.path, getattr(spec, "field", None)
    if path.startswith(HUB) or is_glob(path) or not resolve_path(path).is_dir():
        if field is not None and path.startswith(HUB):
            raise field_error(path, field, "a hub dataset")
        for f in files:
            check_source_file(f, field)
        return
    if field is not None:
        raise field_error(path, field, "a save_to_disk directory")
    layout = saved_layout(resolve_path(path))
    if layout is not None:
        check_split(resolve_path(path), spec.split, *layout)


def read_saved(path: Path, split: str) -> Rows:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a directory written by datasets' save_to_disk ({e})") from None
    if isinstance(ds, DatasetDict):
        check_split(path, split, list(ds), None)
        return _from_dataset(ds[split], f"{path}[{split}]")
    check_split(path, split, None, str(ds.split) if ds.split else None)
    return _from_dataset(ds, str(path))


def read_stream(path: str, label: str, failure: str, **kwargs: Any) -> Rows:
    """The rows of `load_dataset(path, streaming=True, **kwargs)`, counted now (a read error names `failure`) and
    fetched a batch at a time when the build asks for them. `label` names the rows in messages."""
    from datasets import load_dataset

    def open_stream() -> Any:
        return load_dataset(path, streaming=True, **kwargs)

    part = StreamPart(open_stream, label)
    try:
        len(part)
    except Exception as e:  # the loaders raise many types; name the source and the reason
        raise UserError(f"{failure}: {e.__class__.__name__}: {e}") from None
    out = Rows(label)
    out.parts.append(part)
    return out


def read_hub(name: str, subset: str | None, split: str, revision: str | None) -> Rows:
    """Streamed from the hub; without a network (hub.check_dataset went offline), the copy `datasets` prepared in
    its cache, memory-mapped (streaming needs the hub), and an uncached dataset fails at once."""
    from tunekit import hub

    hub.check_dataset(name)
    failure = f"data: could not load hub dataset `{name}` (subset={subset}, split={split}, revision={revision})"
    if not hub.offline_by_choice():
        return read_stream(name, f"hub:{name}[{split}]", failure, name=subset, split=split, revision=revision)
    from datasets import load_dataset

    try:
        ds = load_dataset(name, subset, split=split, revision=revision)
    except Exception as e:
        raise UserError(f"{failure}: {e.__class__.__name__}: {e}") from None
    return _from_dataset(ds, f"hub:{name}[{split}]")


def read_rows(spec: object) -> Rows:
    """All rows of one dataset entry (`DatasetSpec`), in file order."""
    path: str = spec.path  # type: ignore[attr-defined]
    field = getattr(spec, "field", None)
    if field is not None and (path.startswith(HUB) or (not is_glob(path) and resolve_path(path).is_dir())):
        raise field_error(path, field, "a hub dataset" if path.startswith(HUB) else "a save_to_disk directory")
    if path.startswith(HUB):
        out = read_hub(path[len(HUB) :], spec.subset, spec.split, spec.revision)  # type: ignore[attr-defined]
    elif not is_glob(path) and resolve_path(path).is_dir():
        out = read_saved(resolve_path(path), spec.split)  # type: ignore[attr-defined]
    else:
        out = Rows(path)
        keys = frozenset(spec.columns.get(k, k) for k in ROW_KEYS[spec.format])  # type: ignore[attr-defined]
        for f in local_files(path):
            out.add(read_file(f, field, keys))
    if not len(out):
        raise UserError(f"{path}: the dataset is empty")
    return out


def check_exists(specs: list) -> None:
    """Every local file, glob and `builtin:` path of these dataset entries exists (hub datasets are not looked
    up): what `tunekit validate` and the start of `train` check before anything is written."""
    for spec in specs:
        _check_options(spec, local_files(spec.path))
        if getattr(spec, "tools", None):
            try:
                resolve_path(spec.tools)
            except UserError as e:
                raise UserError(f"{e} (the `tools:` file of dataset {spec.path})") from None
