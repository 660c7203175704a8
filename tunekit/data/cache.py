"""On-disk cache of the tokenized (and packed) datasets, keyed by a fingerprint of everything that shapes them.

The key covers: the content (sha256) of every local data file (and `tools:` file), hub dataset coordinates, the tokenizer (its
full vocabulary/merges/normalizer serialisation and special tokens), the chat template text, every `data:`
option except `cache_dir`, `num_proc` and `masked_thought` (the `select` steps included), the identity of each
`data.select` scoring model (its files' sha256, or hub id and revision, and dtype), the effective shuffle seed and
tunekit's cache format version. Changing any of
them builds a new entry; an unchanged rerun loads the old one.

Entries are written to a temporary directory and renamed into place, so a crashed or concurrent build never
leaves a half-written entry, and a file lock per entry makes concurrent processes (the ranks of a
multi-process launch, or two runs at once) build it once: the first builds, the others wait and load it.
An entry damaged afterwards (a file cut short: its size differs from files.json; an Arrow file that does not read)
is removed and built again, saying so; the temporary dirs of builds cut short (kill -9) are removed by the next
build, when no process holds their entry's lock (docs/data.md, "Cache").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunekit import __version__, paths
from tunekit.data.schema import DataConfig
from tunekit.data.sources import HUB, local_files, resolve_path
from tunekit.errors import UserError
from tunekit.files import TMP, file_sha256, saving
from tunekit.ui import console

CACHE_VERSION = 5  # bump when the encoding logic changes what a cached entry contains (3: int32 Arrow files;
# 4: preference rows keep their system text and tool schemas; 5: CSV cells `NA`/`null`/`None`... are text, not
# missing, and an empty cell is ""; one statistics row per dataset entry)


FILES = "files.json"  # each file of an entry and its size, written last: a cut or missing file is seen on load


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return paths.cache_root() / "data"


def source_fingerprints(cfg: DataConfig) -> dict[str, Any]:
    """path -> sha256 of each local file (or hub coordinates) for every dataset in the recipe."""
    out: dict[str, Any] = {}
    for spec in [*cfg.train, *cfg.eval]:
        if spec.path.startswith(HUB):
            out[spec.path] = {"subset": spec.subset, "split": spec.split, "revision": spec.revision}
        else:
            out[spec.path] = {str(f): file_sha256(f) for f in local_files(spec.path)}
        if spec.tools:
            out[f"{spec.path} tools"] = file_sha256(resolve_path(spec.tools))
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()


def fingerprint(cfg: DataConfig, tokenizer: Any, template: str | None, seed: int,
                scorers: list[dict] | None = None) -> str:
    """`scorers`: the identity of each `data.select` score step's model (select_score.model_identity)."""
    # An empty `select` is left out, so entries built before data selection existed keep their keys.
    exclude = {"cache_dir", "masked_thought", "num_proc"} | (set() if cfg.select else {"select"})
    key = {
        "cache_version": CACHE_VERSION,
        "tunekit": __version__,
        "data": cfg.model_dump(mode="json", exclude=exclude),
        "seed": seed,
        "sources": source_fingerprints(cfg),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": template,
    }
    if scorers:
        key["scoring_models"] = scorers
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


@contextlib.contextmanager
def build_lock(entry: Path) -> Iterator[None]:
    """One process at a time per cache entry: the first to get the lock builds, the others then load its entry.

    A file lock rather than `accelerate`'s main_process_first: the data stage runs before the trainer sets up
    torch.distributed, and initialising accelerate's shared state here would fix its settings before the
    trainer could choose them. The lock also covers processes started by hand and several runs at once.
    """
    from filelock import FileLock

    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        yield


@contextlib.contextmanager
def building(entry: Path) -> Iterator[Path]:
    """A temporary directory beside `entry` (KEY.tmpPID) to build into; renamed into place when the block succeeds, with
    files.json (each file's size) beside stats.json. Called under the entry's build lock: temporary dirs of builds
    cut short (kill -9, power loss) are removed first (`remove_stale_builds`)."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # tunekit prints its own statistics
    remove_stale_builds(entry)
    tmp = entry.with_name(f"{entry.name}{TMP}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with saving(tmp):  # a full disk named: pyarrow's writer does not say where
            yield tmp
        sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / FILES).write_text(json.dumps({"files": sizes}, indent=1) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(entry)
    except OSError:  # another process wrote the same entry first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_builds(entry: Path) -> None:
    """Remove the `KEY.tmpPID/` dirs in the cache that no build is writing: those of `entry`'s own key (this
    process holds its lock, so no other one builds it), and those of other keys whose lock is free. The lock, not
    the PID, decides: it is held for the whole build and released by the OS when the process dies, and it also
    covers a build on another host sharing the cache, as far as the filesystem's locks reach across hosts (NFSv4
    and most cluster filesystems: yes; where they do not, the build lock itself could not keep two builds apart)."""
    from filelock import FileLock, Timeout

    stale: dict[str, list[Path]] = {}
    for tmp in entry.parent.glob(f"*{TMP}*"):
        key, _, pid = tmp.name.rpartition(TMP)
        if key and pid.isdigit() and tmp.is_dir() and tmp.name != f"{entry.name}{TMP}{os.getpid()}":
            stale.setdefault(key, []).append(tmp)
    removed = []
    for key, dirs in stale.items():
        lock = contextlib.nullcontext() if key == entry.name else FileLock(str(entry.parent / key) + ".lock", timeout=0)
        try:
            with lock:
                for tmp in dirs:
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed += [tmp.name] if not tmp.exists() else []
        except (Timeout, OSError):  # a build of that key is running (here or on another host), or no lock file
            continue
    if removed:
        console.print(f"data cache: removed {len(removed)} temporary dir(s) of builds that were cut short "
                      f"({', '.join(sorted(removed))}) in {entry.parent}")


def write_stats(tmp: Path, stats: dict) -> None:
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


def load(entry: Path) -> tuple[Any, Any, dict] | None:
    """(train, eval or None, stats): the Arrow files memory-mapped (`Dataset.from_file`), never copied to memory,
    so every rank of a launch reads the same pages. None when there is no entry yet, or when the entry is damaged
    (a file's size differs from files.json, an Arrow file does not read, a row count differs from stats.json):
    that entry is then removed, saying so, and the caller builds it again."""
    if not (entry / "stats.json").is_file():
        return None
    from datasets import Dataset

    why = damage(entry)
    if why is None:
        try:
            stats = json.loads((entry / "stats.json").read_text(encoding="utf-8"))
            evals = Dataset.from_file(str(entry / "eval.arrow")) if (entry / "eval.arrow").is_file() else None
            train = Dataset.from_file(str(entry / "train.arrow"))
        except (OSError, ValueError) as e:  # pyarrow: OSError without an errno (a cut file), ArrowInvalid
            if isinstance(e, OSError) and e.errno is not None:
                raise  # the file system's error (permissions, too many open files): not the entry's content
            why = f"{type(e).__name__}: {e}"
        else:
            why = _rows_differ(stats, train, evals)
            if why is None:
                return train, evals, stats
    discard(entry, why)
    return None


def damage(entry: Path) -> str | None:
    """What is wrong with an entry's files, by the sizes files.json records (entries built before it: None)."""
    try:
        files = json.loads((entry / FILES).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        return f"{FILES} does not parse ({type(e).__name__})"
    for name, size in files.items():
        p = entry / name
        found = p.stat().st_size if p.is_file() else None
        if found != size:
            return f"{name} is missing" if found is None else f"{name} has {found:,} bytes, the build wrote {size:,}"
    return None


def _rows_differ(stats: dict, train: Any, evals: Any) -> str | None:
    for name, ds, rows in (("train", train, stats.get("train_rows")), ("eval", evals, stats.get("eval_rows"))):
        if isinstance(rows, int) and ds is not None and len(ds) != rows:
            return f"{name}.arrow holds {len(ds)} rows, the build wrote {rows}"
    return None


def discard(entry: Path, why: str) -> None:
    """Remove a damaged entry (renamed to a temporary name first, so a removal cut short is cleaned up later)."""
    console.print(f"[yellow]notice:[/] the data cache entry {entry} is damaged ({why}); building it again")
    try:
        aside = entry.with_name(f"{entry.name}{TMP}{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        entry.rename(aside)
        shutil.rmtree(aside)
    except OSError as e:
        raise UserError(f"the data cache entry {entry} is damaged ({why}) and could not be removed "
                        f"({e.strerror or e}): delete it (rm -r {entry}) and run again, or set data.cache_dir to "
                        "another dir") from None
