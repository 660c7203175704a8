"""Local data files as tunekit reads them: UTF-8 text with or without a leading byte-order mark, plain or compressed
(`.gz`, `.bz2`, `.xz`; `.zst` with Python 3.14's `compression.zstd` or the `zstandard` package), JSON and JSON Lines
parsed here so that a malformed line is reported with its line number (the line numbers of the decompressed text:
the same as the uncompressed file's).

A JSON Lines file is parsed once to check every line, then kept as each row's byte offset (in the decompressed
text) and line number; a row is parsed again when fetched. A compressed file cannot seek, so it is read forward
from a cursor that restarts from the first byte when an earlier row is asked for (the build asks in file order).
"""

from __future__ import annotations

import io
import json
import os
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tunekit.errors import UserError
from tunekit.paths import decode_utf8

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}  # suffix -> compression
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".arrow")  # the file types tunekit reads
TEXT_SUFFIXES = (".jsonl", ".json", ".csv")  # the file types that may be compressed (Parquet compresses itself)


def file_type(path: Path) -> tuple[str, str | None]:
    """The data suffix and the compression of a file: `a.jsonl.gz` -> (".jsonl", "gzip"), `a.csv` -> (".csv", None)."""
    suffix = path.suffix.lower()
    if suffix in COMPRESSIONS:
        return Path(path.stem).suffix.lower(), COMPRESSIONS[suffix]
    return suffix, None


def _zstd_reader(path: Path) -> BinaryIO:
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+

        return zstd.open(path, "rb")  # type: ignore[no-any-return]
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{path}: reading .zst files needs the `zstandard` package (Python 3.14 has zstd built "
                        "in): `pip install zstandard`, or decompress the file first (`zstd -d`)") from None
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True, closefd=True)  # noqa: SIM115
    return io.BufferedReader(raw)  # type: ignore[arg-type]  # readline and line iteration


def check_readable(path: Path) -> None:
    """A compressed file tunekit can decompress here (zstd needs a package): fails before anything is read."""
    if file_type(path)[1] == "zstd":
        _zstd_reader(path).close()


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when its name ends with a compression suffix."""
    kind = file_type(path)[1]
    if kind == "gzip":
        import gzip

        return gzip.open(path, "rb")  # type: ignore[return-value]
    if kind == "bz2":
        import bz2

        return bz2.open(path, "rb")  # type: ignore[return-value]
    if kind == "xz":
        import lzma

        return lzma.open(path, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        return _zstd_reader(path)
    return open(path, "rb")  # noqa: SIM115 (the caller closes it)


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """A compressed file that cannot be decompressed (truncated, corrupt, or not compressed at all) is a UserError
    naming the file; errors of a plain file pass through."""
    kind = file_type(path)[1]
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # gzip, bz2, lzma and zstd raise different types for a bad stream
        if kind is None:
            raise
        raise UserError(f"{path}: could not decompress it as {kind} ({e.__class__.__name__}: {e}); check that the "
                        f"file is complete and really {kind}-compressed, or decompress it yourself") from None


def read_bytes(path: Path) -> bytes:
    with reading(path), open_binary(path) as f:
        return f.read()


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file (a leading byte-order mark is not part of the first name)."""
    import csv

    with reading(path), open_binary(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
        try:
            return next(csv.reader(text), [])
        except UnicodeDecodeError:
            raise UserError(f"{path}:1: the header line is not UTF-8 text; save the file as UTF-8") from None


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


@dataclass
class JsonlPart:
    """A JSON Lines file: the byte offset (in the decompressed text) and line number of each row, parsed again
    when fetched."""

    path: Path
    offsets: array = field(default_factory=lambda: array("q"))
    lines: array = field(default_factory=lambda: array("q"))
    _cursor: tuple | None = None  # compressed files: (pid, open reader, its position in the decompressed text)

    def __len__(self) -> int:
        return len(self.offsets)

    def fetch(self, local: list[int]) -> tuple[list[dict], list[str]]:
        with reading(self.path):
            if file_type(self.path)[1] is None:
                with open(self.path, "rb") as f:
                    raws = []
                    for i in local:
                        f.seek(self.offsets[i])
                        raws.append(f.readline())
            else:
                raws = [self._forward_to(self.offsets[i]) for i in local]
        rows = [json.loads(decode_utf8(raw, str(self.path), self.lines[i] - 1)) for raw, i in zip(raws, local)]
        return rows, [f"{self.path}: row {i + 1} (line {self.lines[i]})" for i in local]

    def _forward_to(self, offset: int) -> bytes:
        """The line at `offset` of a compressed file, read forward from the cursor (reopened to go back, and in
        each forked process)."""
        pid, f, pos = self._cursor or (None, None, 0)
        if pid != os.getpid() or offset < pos:
            if f is not None and pid == os.getpid():
                f.close()
            pid, f, pos = os.getpid(), open_binary(self.path), 0
        while pos < offset:
            got = f.read(min(offset - pos, 1 << 20))
            if not got:
                raise UserError(f"{self.path}: the file ended before byte {offset} of its text; did it change during "
                                "the build?")
            pos += len(got)
        line = f.readline()
        self._cursor = (pid, f, pos + len(line))
        return line


def read_jsonl(path: Path) -> JsonlPart:
    """Every line is parsed and checked here (errors name the line); only offsets are kept."""
    part = JsonlPart(path)
    offset = 0
    with reading(path), open_binary(path) as f:
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
    return part


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


def read_json(path: Path, field: str | None = None, row_keys: frozenset[str] = frozenset()) -> list[dict] | JsonlPart:
    """The rows of a `.json` file: an array of objects, one object (see `_unwrap`), or JSON Lines under a .json name
    (returned as a JsonlPart)."""
    text = decode_utf8(read_bytes(path), str(path))
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON objects, one per line: JSON Lines under a .json name
            if field is not None:
                raise UserError(f"{path}: `field: {field}` is set but the file holds JSON Lines (one object per "
                                "line), which have no top-level object to take a field of; remove `field:`") from None
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
    return data


def _unsupported(path: Path, suffix: str, compression: str | None) -> UserError:
    shown = suffix + path.suffix.lower() if compression else path.suffix
    if compression and suffix in SUFFIXES:
        return UserError(f"data: `{path}`: a {compression}-compressed {suffix} file is not read ({suffix} files "
                         f"compress their own data): decompress it, or convert it to .parquet")
    return UserError(f"data: `{path}`: unsupported file type `{shown or path.name}`; use one of "
                     f"{', '.join(SUFFIXES)} (.jsonl, .json and .csv also compressed: {', '.join(COMPRESSIONS)}), a "
                     "glob, a `save_to_disk` directory or hub:NAME")


def check_source_file(path: Path, field: str | None = None) -> str:
    """The data suffix of a file tunekit reads (`.jsonl` for `a.jsonl.gz`). Any other file type, a compressed
    Parquet/Arrow file, a `.zst` file without zstd support and `field:` on a file that is not `.json` are errors."""
    suffix, compression = file_type(path)
    if suffix not in SUFFIXES or (compression and suffix not in TEXT_SUFFIXES):
        raise _unsupported(path, suffix, compression)
    if compression:
        check_readable(path)
    if field is not None and suffix != ".json":
        raise field_error(str(path), field, f"a {suffix} file")
    return suffix


def is_arrow_ipc_file(path: Path) -> bool:
    """An Arrow IPC *file* (Feather v2, `pa.ipc.new_file`: starts with `ARROW1`) rather than the IPC stream format
    `datasets` writes."""
    with open(path, "rb") as f:
        return f.read(6) == b"ARROW1"


def saved_layout(path: Path) -> tuple[list[str] | None, str | None] | None:
    """A `save_to_disk` directory's splits (a DatasetDict's `dataset_dict.json`), else None and the split its one
    Dataset was saved as (`state.json`'s `_split`, often null): read without importing `datasets`. None for a
    directory that is neither (reading it reports that)."""
    try:
        if (path / "dataset_dict.json").is_file():
            return list(json.loads((path / "dataset_dict.json").read_text())["splits"]), None
        if (path / "state.json").is_file():
            saved = json.loads((path / "state.json").read_text()).get("_split")
            return None, str(saved) if saved else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def check_split(path: Path, split: str, splits: list[str] | None, saved_as: str | None) -> None:
    """`split:` on a saved DatasetDict must name one of its splits; a saved single Dataset is used whole, so `split:`
    may only keep its default (`train`) or name the split the dataset was saved as."""
    if splits is not None:
        if split not in splits:
            raise UserError(f"{path}: no split `{split}`; found {', '.join(splits)}. Set `split:` in the dataset entry.")
    elif split not in ("train", saved_as):
        raise UserError(f"{path}: `split: {split}` is set, but the directory holds one Dataset (saved by "
                        f"Dataset.save_to_disk{f' as split `{saved_as}`' if saved_as else ''}), not a DatasetDict of "
                        "splits, so there is no split to pick; remove `split:` to use all its rows, or point `path:` "
                        "at the directory of the split you want")


def field_error(path: str, field: str, what: str) -> UserError:
    return UserError(f"{path}: `field: {field}` is set, but `field:` picks the list of rows in a .json file holding "
                     f"one object ({{\"{field}\": [...]}}), and this is {what}; remove `field:` from this dataset's "
                     "entry")
