"""A full, read-only or not-writable disk wherever a run writes: a clear error, not a traceback.

`guard(recipe)` wraps `tunekit train` and `tunekit preprocess` (the parent of a multi-process launch and every
worker): an error because the disk is full (ENOSPC, EDQUOT), a file grew past the filesystem's or the process's
size limit (EFBIG, `ulimit -f`) or the filesystem is read-only (EROFS) becomes a UserError (exit 2) that names the
path, the option that put it there (`output.dir`, `data.cache_dir`) and how to go on: `--resume` from the run's
latest complete checkpoint, or the same command again when the run had not trained yet. Permission denied (EACCES,
EPERM) is reported the same way when the path is under one of those dirs (elsewhere it is some other file's
problem, reported where it happens). The guard for checkpoint saves inside the training loop
(`guards.disk_full`) says the same for a full disk, naming the last complete checkpoint.

Nothing a failed write left is later taken as valid: files are written whole (`files.write_whole`,
`files.append_line`), final/ is renamed into place when complete (`pipeline.save_final`), and so are data cache
entries (`data/cache.py`).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tunekit import checkpoints, paths, run_dir
from tunekit.data.cache import cache_root
from tunekit.errors import RunStopped, UserError
from tunekit.files import DENIED, FULL, READ_ONLY, TOO_LARGE, write_failure

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


@contextlib.contextmanager
def guard(recipe: Recipe) -> Iterator[None]:
    """Write failures under the recipe's command (see the module docstring) as UserErrors."""
    out = Path(recipe.output.dir)
    dirs = {"data.cache_dir": cache_root(recipe.data), "output.dir": out, "$TUNEKIT_CACHE": paths.cache_root()}
    try:
        yield
    except (UserError, RunStopped):
        raise
    except Exception as e:
        found = write_failure(e)
        error = as_user_error(*found, dirs, *next_step(out)) if found else None
        if error is None:
            raise
        raise error from e  # the original is shown under --debug


def next_step(out: Path) -> tuple[str, bool]:
    """How to go on once there is room, and whether the run dir holds progress (worth moving, not replacing)."""
    with contextlib.suppress(OSError):
        if run_dir.has_progress(out):
            last = checkpoints.latest_checkpoint(out)
            return "continue with --resume" + (f" (from {last})" if last else ""), True
        if (out / run_dir.METRICS).exists():  # it trained, but wrote no checkpoint
            return "start again with --overwrite (the run wrote no checkpoint to resume from)", False
    return "run the same command again", False


def as_user_error(code: int, path: str | None, dirs: dict[str, Path], then: str = "run the same command again",
                  progress: bool = False) -> UserError | None:
    """The message for a failed write of `path` (None: somewhere under output.dir), or None when it is not the
    run's to report (permission denied outside the run's dirs). `dirs`: option -> dir (the first holding `path`
    names it); `then`: how to go on (`next_step`); `progress`: the run dir holds checkpoints."""
    where = Path(path) if path else dirs["output.dir"]
    option = next((o for o, d in dirs.items() if _under(where, d)), None)
    if code in DENIED and option is None:
        return None
    elsewhere = "" if option is None else f" or point {option} to another dir" if option.startswith("$") else \
        " or move the run dir to another disk and set output.dir to it" if option == "output.dir" and progress \
        else f" or choose another {option}"
    if code in FULL:
        what = "the disk is full" if code == errno.ENOSPC else "the disk quota is used up"
        return UserError(f"{what} (writing {where}): free space{elsewhere}, then {then}")
    if code in TOO_LARGE:
        return UserError(f"cannot write {where}: the file is larger than the filesystem or the process's file size "
                         f"limit (`ulimit -f`) allows: raise the limit{elsewhere}, then {then}")
    name = f"`{option}`" if option else "the directory"
    why = "is on a read-only filesystem" if code in READ_ONLY else "is not writable (permission denied)"
    return UserError(f"{name} {why} (cannot write {where}): make it writable{elsewhere}, then {then}")


def _under(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory.expanduser().resolve())
    except (OSError, RuntimeError):
        return False
