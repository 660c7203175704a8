"""Writing files so that a failure leaves nothing half-written, and recognising a write that failed for lack of room.

- `write_whole`: a file is replaced whole (a temp file beside it, renamed over it): a crash or a full disk leaves
  the old file or none, never an empty or cut one that a later run reads as valid (a 0-byte `.tunekit-run`
  marker, half a summary.json).
- `append_line`: one line is added to a .jsonl file, or nothing (no partial line for every later reader to trip on).
- `write_failure`: whether an exception is a write that failed because the disk is full, a size limit was hit, the
  filesystem is read-only or permission was denied (`disk.guard` turns those into clear errors).
- `saving(dir)`: libraries that save through Rust or C++ (safetensors, tokenizers, pyarrow, torch's zip writer)
  say "No space left on device" without a path; inside `saving(dir)` that becomes an OSError naming `dir`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tunekit.errors import RunStopped, UserError

TMP = ".tmp"  # the suffix of a file (or final/ dir) being written, renamed into place when complete


def write_whole(path: Path, text: str) -> None:
    """Write `path` whole or not at all: into a temp file beside it (`NAME.tmp`), renamed over it when written. A
    full disk or a crash leaves the old file (or none), never an empty or cut one that a later run would read as
    valid (a 0-byte `.tunekit-run` marker, half a summary.json); the temp file is removed when the write fails."""
    tmp = path.with_name(path.name + TMP)
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _name(e, path)
        raise


def append_line(path: Path, line: str) -> None:
    """Append `line` (and a newline) to a .jsonl file, or nothing: a write that fails part-way (a full disk) is cut
    back off, and a file it created is removed, so no reader meets a partial line or an empty record file."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException as e:
            if size == 0:
                path.unlink(missing_ok=True)
            else:
                os.ftruncate(fd, size)
            _name(e, path)
            raise
    finally:
        os.close(fd)


def _name(e: BaseException, path: Path) -> None:
    """Let an OSError from a write (which names no file: the data went to an open descriptor) name `path`."""
    if isinstance(e, OSError) and not e.filename:
        e.filename = str(path)


FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS,)
TOO_LARGE = (errno.EFBIG,)
DENIED = (errno.EACCES, errno.EPERM)
# what the Rust/C++ writers say instead of an errno ("... (os error 28)")
_SAID = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
         "Read-only file system": errno.EROFS, "File too large": errno.EFBIG}


def write_failure(e: BaseException) -> tuple[int, str | None] | None:
    """(errno, path or None) when `e` (or an exception it was raised from: datasets wraps the OSError of its
    writer) is a write that failed for lack of space, size limit, a read-only filesystem or permissions."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        code = getattr(x, "errno", None)
        if code not in (*FULL, *READ_ONLY, *TOO_LARGE, *DENIED):
            code = next((n for said, n in _SAID.items() if said in str(x)), None)
        if code is not None:
            filename = getattr(x, "filename", None)
            return code, str(filename) if filename else None
        x = x.__cause__ or (None if x.__suppress_context__ else x.__context__)
    return None


@contextlib.contextmanager
def saving(directory: Path) -> Iterator[None]:
    """A save into `directory` that runs out of space (or hits a read-only filesystem or a size limit) raises an
    OSError naming `directory`. torch's zip writer can fail with only "unexpected pos N vs M" when its first write
    hit the limit: then the filesystem's own free space decides (under 1 MiB left: full)."""
    try:
        yield
    except (UserError, RunStopped):
        raise
    except Exception as e:
        found = write_failure(e)
        if found is None and "unexpected pos" in str(e) and free_bytes(directory) < 1 << 20:
            found = (errno.ENOSPC, None)
        if found is None or isinstance(e, OSError) and e.filename:
            raise
        code, path = found
        raise OSError(code, os.strerror(code), path or str(directory)) from e


def free_bytes(directory: Path) -> int:
    """Free space on the filesystem that holds `directory` (or its nearest existing parent)."""
    where = next((d for d in (directory, *directory.parents) if d.exists()), None)
    return shutil.disk_usage(where).free if where is not None else 1 << 62


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
