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
from tunekit.run_dir import file_sha256

CACHE_VERSION = 5  # bump when the encoding logic changes what a cached entry contains (3: int32 Arrow files;
# 4: preference rows keep their system text and tool schemas; 5: CSV cells `NA`/`null`/`None`... are text, not
# missing, and an empty cell is ""; one statistics row per dataset entry)


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
    """A temporary directory beside `entry` to build into; renamed into place when the block succeeds."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # tunekit prints its own statistics
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(entry)
    except OSError:  # another process wrote the same entry first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)


def write_stats(tmp: Path, stats: dict) -> None:
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


def load(entry: Path) -> tuple[Any, Any, dict] | None:
    """(train, eval or None, stats): the Arrow files memory-mapped (`Dataset.from_file`), never copied to memory,
    so every rank of a launch reads the same pages."""
    if not (entry / "stats.json").is_file():
        return None
    from datasets import Dataset

    stats = json.loads((entry / "stats.json").read_text(encoding="utf-8"))
    evals = Dataset.from_file(str(entry / "eval.arrow")) if (entry / "eval.arrow").is_file() else None
    return Dataset.from_file(str(entry / "train.arrow")), evals, stats
