"""Read dataset rows from files, globs, saved datasets or the hub, naming the file and line of anything malformed.

JSON Lines and JSON are parsed here (so a bad line is reported with its line number); CSV, Parquet and Arrow
files, `save_to_disk` directories and hub datasets go through the real `datasets` loaders. Hub datasets (with a
network) and CSV/Parquet/Arrow files of `STREAM_BYTES` or more are read with `load_dataset(..., streaming=True)`
(`read_stream`: one call, the hub passing its name, a local file the builder of its type), in batches.
"""

from __future__ import annotations

import bisect
import glob
import json
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from tunekit.data.schema import ROW_KEYS
from tunekit.errors import UserError
from tunekit.paths import asset, decode_utf8

ASSETS_DATA = asset("data")
HUB = "hub:"
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".arrow")
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
class JsonlPart:
    """A JSON Lines file: the byte offset and line number of each row (parsed again when fetched)."""

    path: Path
    offsets: array = field(default_factory=lambda: array("q"))
    lines: array = field(default_factory=lambda: array("q"))

    def __len__(self) -> int:
        return len(self.offsets)

    def fetch(self, local: list[int]) -> tuple[list[dict], list[str]]:
        rows, where = [], []
        with open(self.path, "rb") as f:
            for i in local:
                f.seek(self.offsets[i])
                rows.append(json.loads(f.readline().decode("utf-8")))
                where.append(f"{self.path}: row {i + 1} (line {self.lines[i]})")
        return rows, where


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
    return any(c in path for c in "*?[")


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


def read_jsonl(path: Path) -> Rows:
    """Every line is parsed and checked here (errors name the line); only offsets are kept."""
    part = JsonlPart(path)
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            line = decode_utf8(raw, str(path), lineno - 1)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            check_surrogates(line, row, f"{path}:{lineno}")
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: each line must be a JSON object, found {type(row).__name__}")
            part.offsets.append(start)
            part.lines.append(lineno)
    out = Rows(str(path))
    out.parts.append(part)
    return out


def _unwrap(data: dict, path: Path, field: str | None, row_keys: set[str]) -> object:
    """The rows of a file holding one JSON object: its `field`, the object itself when it is one row (it has a
    column the format reads, e.g. `{"conversations": [...]}`), or its only list field (`{"data": [...]}`)."""
    lists = [k for k, v in data.items() if isinstance(v, list)]
    if field is not None:
        if not isinstance(data.get(field), list):
            raise UserError(f"{path}: `field: {field}` names no list in the file's top-level object; its list "
                            f"fields: {', '.join(lists) or 'none'}")
        return data[field]
    if row_keys & set(data):
        return [data]
    if len(lists) == 1:
        return data[lists[0]]
    found = f"{len(lists)} list fields ({', '.join(lists)})" if lists else "no list field"
    raise UserError(f"{path}: the file holds one JSON object with {found}, and none of the columns the format "
                    f"reads ({', '.join(sorted(row_keys))}); set `field:` in this dataset's entry "
                    "(data.train[].field) to the key whose list holds the rows")


def check_surrogates(text: str, value: object, where: str) -> None:
    """JSON may escape half of a UTF-16 pair (`\\ud800`) that no text encoding can hold: the tokenizer would fail
    on it later, far from the row. Only text with such an escape is checked (cheap for the rest)."""
    if "\\ud" not in text.lower():
        return
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where}: the text holds a lone surrogate ({e.object[e.start]!a}, half of a UTF-16 "
                        "pair), which is not valid Unicode; fix or drop that row") from None


def read_json(path: Path, field: str | None = None, row_keys: frozenset[str] = frozenset()) -> Rows:
    text = decode_utf8(path.read_bytes(), str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON objects, one per line: JSON Lines under a .json name
            return read_jsonl(path)
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    check_surrogates(text, data, str(path))
    if isinstance(data, dict):
        data = _unwrap(data, path, field, set(row_keys))
    elif field is not None:
        raise UserError(f"{path}: `field: {field}` is set but the file holds a JSON {type(data).__name__}, not an "
                        "object; remove `field:`")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of objects (or JSON Lines), found {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path}: item {i + 1} must be a JSON object, found {type(row).__name__}")
    return Rows(str(path), data, [f"{path}: row {i + 1}" for i in range(len(data))])


def _from_dataset(ds: object, name: str) -> Rows:
    out = Rows(name)
    out.parts.append(DatasetPart(ds, name))
    return out


def _csv_string_features(path: Path) -> object:
    """CSV cells have no types; read every column as text (so `2` stays the string "2")."""
    import csv

    from datasets import Features, Value

    with open(path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    return Features({name: Value("string") for name in header})


def read_file(path: Path, field: str | None = None, row_keys: frozenset[str] = frozenset()) -> Rows:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        return read_json(path, field, row_keys)
    if suffix in BUILDERS and path.stat().st_size >= STREAM_BYTES:
        extra = {"features": _csv_string_features(path)} if suffix == ".csv" else {}
        return read_stream(BUILDERS[suffix], str(path), f"{path}: could not read it as {suffix[1:]}",
                           data_files=[str(path)], split="train", **extra)
    from datasets import Dataset

    try:
        if suffix == ".csv":
            ds = Dataset.from_csv(str(path), keep_in_memory=True, features=_csv_string_features(path))
        elif suffix == ".parquet":
            ds = Dataset.from_parquet(str(path), keep_in_memory=True)
        elif suffix == ".arrow":
            ds = Dataset.from_file(str(path), in_memory=True)
        else:
            raise UserError(f"data: `{path}`: unsupported file type `{suffix}`; use one of {', '.join(SUFFIXES)}, "
                            "a glob, a `save_to_disk` directory or hub:NAME")
    except UserError:
        raise
    except Exception as e:  # the loaders raise many types; name the file and the reason
        raise UserError(f"{path}: could not read it as {suffix[1:]}: {e.__class__.__name__}: {e}") from None
    return _from_dataset(ds, str(path))


def read_saved(path: Path, split: str) -> Rows:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a directory written by datasets' save_to_disk ({e})") from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise UserError(f"{path}: no split `{split}`; found {', '.join(ds)}. Set `split:` in the dataset entry.")
        ds = ds[split]
    return _from_dataset(ds, f"{path}[{split}]")


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
    if path.startswith(HUB):
        out = read_hub(path[len(HUB) :], spec.subset, spec.split, spec.revision)  # type: ignore[attr-defined]
    elif not is_glob(path) and resolve_path(path).is_dir():
        out = read_saved(resolve_path(path), spec.split)  # type: ignore[attr-defined]
    else:
        out = Rows(path)
        keys = frozenset(spec.columns.get(k, k) for k in ROW_KEYS[spec.format])  # type: ignore[attr-defined]
        for f in local_files(path):
            out.add(read_file(f, spec.field, keys))  # type: ignore[attr-defined]
    if not len(out):
        raise UserError(f"{path}: the dataset is empty")
    return out


def check_exists(specs: list) -> None:
    """Every local file, glob and `builtin:` path of these dataset entries exists (hub datasets are not looked
    up): what `tunekit validate` and the start of `train` check before anything is written."""
    for spec in specs:
        local_files(spec.path)
        if getattr(spec, "tools", None):
            try:
                resolve_path(spec.tools)
            except UserError as e:
                raise UserError(f"{e} (the `tools:` file of dataset {spec.path})") from None
