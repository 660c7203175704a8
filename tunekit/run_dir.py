"""The run directory: layout, overwrite/resume rules, metrics, versions and summary files.

    RUN_DIR/
      recipe.resolved.yaml   the validated recipe with every default filled in (local model dirs, reward and eval
                             task files: absolute paths)
      versions.json          python and library versions
      data.json              data fingerprint (sha256 of each file) and preprocessing statistics
      metrics.jsonl          one JSON object per logged step (schema in the README, written by tunekit/metrics.py)
      checkpoints/checkpoint-N/   resumable state (weights, optimizer, scheduler, RNG, trainer state)
      final/                 the trained weights (adapter or full model) as safetensors + tokenizer + chat template
                             (written to final.tmp/, renamed when complete: whole or absent)
      stages/NAME/           a staged run's stages (reft: warmup, rl), each with checkpoints/, final/, stage.json
      summary.json           parameter counts, steps, time, final loss, throughput (tokens/s, MFU), peak memory
      .tunekit-run           marker: tunekit made this dir (only such a dir is reused or deleted by --overwrite)
      .tunekit-lock          locked while a run uses the dir
      train.log              the run's console output, when `tunekit compare` ran it (never deleted by the run: the
                             process writing it is the run itself)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunekit.checkpoints import CHECKPOINTS, TORN, latest_checkpoint, torn_checkpoints
from tunekit.errors import UserError
from tunekit.files import TMP, append_line, write_whole

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

FINAL = "final"
METRICS = "metrics.jsonl"
STAGES = "stages"


MARKER = ".tunekit-run"  # written first in every run dir tunekit creates: only such a dir is ever deleted
LOCK = ".tunekit-lock"  # flock'ed while a run uses the dir (released by the OS when the process dies)
LOG = "train.log"  # the console output of a run `tunekit compare` started: kept by --overwrite and by a reused dir
HEADER = ("recipe.resolved.yaml", "versions.json", "data.json")  # what a run writes before it trains
WRITTEN = (*HEADER, METRICS, "summary.json", CHECKPOINTS, FINAL, STAGES, "initial_adapter", "eval", "resumes.jsonl")
LOCK_ENV = "TUNEKIT_RUN_DIR_LOCKED"  # set by the process holding the lock, so its workers do not take it again
_held: list = []  # open lock files, kept for the life of the process


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Make `out` ready for a run: create it (with the marker) or reuse it, and lock it.

    Refused: a file; a non-empty dir tunekit did not make (no marker), unless resuming a run with checkpoints;
    a dir another run holds. A tunekit dir whose run stopped before training (only the header files) is reused.
    `overwrite` deletes what tunekit wrote in a tunekit dir, and refuses if anything else is there.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"output.dir: `{out}` exists and is a file")
    entries = [p.name for p in out.iterdir()] if out.exists() else []
    ours = MARKER in entries
    if entries and not ours and not (resume and has_progress(out)):
        raise UserError(f"output.dir: `{out}` is not empty and was not made by tunekit (no {MARKER} file), so it "
                        f"is never written to or deleted: choose another output.dir (found: {_some(entries)}). A run "
                        "written by an older tunekit (no marker yet) can still be continued with --resume.")
    if ours:
        lock(out)  # before looking further: another run may be changing the dir
    if resume and not has_progress(out) and not (ours and _not_started(out)):
        torn = "; ".join(f"{c.name}: {why}" for c, why in torn_checkpoints(out))
        aside = sorted(p.name for p in (out / CHECKPOINTS / TORN).glob("*"))
        raise UserError(f"--resume: no checkpoint in `{out / CHECKPOINTS}` to resume from" + (
            f" (incomplete ones: {torn})" if torn else
            f" (the incomplete ones were set aside to {out / CHECKPOINTS / TORN}: {_some(aside)}); start again with "
            "--overwrite" if aside else "; nothing has run there yet: train without --resume" if not entries else
            "; start again with --overwrite (output.save_steps or output.save_minutes sets how often it saves)"))
    out.mkdir(parents=True, exist_ok=True)
    if not ours:
        _write_marker(out)
    lock(out)
    if resume:
        return
    if _not_started(out):
        _remove(out, _entries(out))
        return
    if not overwrite:
        raise UserError(f"output.dir: `{out}` is not empty. Use --resume to continue that run, "
                        "--overwrite to replace it, or choose another output.dir.")
    foreign = [n for n in _entries(out) if not _written_by_tunekit(n)]
    if foreign:
        raise UserError(f"--overwrite: `{out}` holds files tunekit did not write ({_some(foreign)}); nothing was "
                        "deleted. Move them away or choose another output.dir.")
    _remove(out, _entries(out))


def _entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name not in (MARKER, LOCK, LOG))


def make_dir(out: Path) -> None:
    """Create `out` as a tunekit run dir (with the marker) before a run starts in it; an existing tunekit dir is
    left as it is, and a non-empty dir tunekit did not make is refused."""
    if out.exists() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise UserError(f"`{out}` is not empty and was not made by tunekit (no {MARKER} file); choose another dir")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        _write_marker(out)


def _write_marker(out: Path) -> None:
    write_json(out / MARKER, {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": "tunekit"})


def _written_by_tunekit(name: str) -> bool:
    # NAME.tmp: a write cut short; final.old: the final/ a resumed run's new one replaces (pipeline.replace_dir)
    return name.removesuffix(TMP).removesuffix(".old") in WRITTEN or name.startswith("eval-")


def _not_started(out: Path) -> bool:
    """A tunekit dir holding at most the header files: a run that stopped before its first step."""
    return (out / MARKER).is_file() and all(n.removesuffix(TMP) in HEADER for n in _entries(out))


def _remove(out: Path, names: list[str]) -> None:
    for n in names:
        p = out / n
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _some(names: list[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def lock(out: Path) -> None:
    """Hold an exclusive lock on `out` for the life of this process; another run on the same dir is refused."""
    import fcntl

    key = str(out.resolve())
    if os.environ.get(LOCK_ENV) == key or any(k == key for k, _ in _held):
        return  # our launcher (or this process) holds it
    f = open(out / LOCK, "a+")  # noqa: SIM115 - kept open: the lock lives as long as the file is open
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError(f"output.dir: `{out}` is in use by another tunekit run (it holds {out / LOCK}); wait for it "
                        "to finish or choose another output.dir") from None
    _held.append((key, f))
    os.environ[LOCK_ENV] = key  # inherited by torchrun workers


def has_progress(out: Path) -> bool:
    """Whether `--resume` has something to go on from: a checkpoint, or a finished stage of a staged run."""
    stages = sorted((out / STAGES).glob("*"))
    return latest_checkpoint(out) is not None or any(
        latest_checkpoint(d) is not None or (d / "stage.json").is_file() for d in stages)


RESOLVED = "recipe.resolved.yaml"
RESUMES = "resumes.jsonl"  # (in WRITTEN) one line per --resume: step, time, what changed (the header files' history)
# What may change between a run and its --resume without --allow-changes: how long, how often it logs, where and
# on how many processes it runs, what is evaluated after; and the per-device batch / accumulation when the global
# batch stays the same. Anything else changes what the checkpoint means.
MAY_CHANGE = ("trainer.max_steps", "trainer.logging_steps", "trainer.eval_steps", "trainer.report_to", "output.",
              "launch.", "eval.")


@dataclass
class ResumeRecord:
    """What a --resume changes in the run dir: a resumes.jsonl line, and recipe.resolved.yaml / data.json when the
    recipe or the data changed. `commit` writes them once the checkpoint has loaded, so a resume that fails before
    (a change the checkpoint cannot load with, a bad data row, Ctrl-C while the model loads) leaves the run dir's
    record as it was: the next --resume compares with what the checkpoints were trained on."""

    out: Path
    recipe_changes: dict
    data_changes: list
    recipe: dict | None = None  # the new recipe.resolved.yaml (None: unchanged)
    data: dict | None = None  # the new data.json (None: unchanged); see `data_json`
    committed: bool = False

    def data_json(self) -> dict:
        """data.json as the resume will write it (read from the run dir when the data stage did not set it)."""
        if self.data is None:
            self.data = json.loads((self.out / "data.json").read_text(encoding="utf-8"))
        return self.data

    def commit(self, checkpoint: Path | None) -> None:
        """Append the resume to resumes.jsonl (with the checkpoint it went on from), then update the header."""
        if self.committed:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(checkpoint or ""),
                  "recipe_changes": self.recipe_changes, "data_changes": self.data_changes}
        append_line(self.out / RESUMES, json.dumps(record, default=str))
        if self.recipe is not None:
            write_yaml(self.out / RESOLVED, self.recipe)
        if self.data is not None:
            write_json(self.out / "data.json", self.data)
        self.committed = True


def write_run_header(out: Path, recipe: Recipe, files: dict, resume: bool = False,
                     allow_changes: bool = False) -> ResumeRecord | None:
    """The files every run writes before it trains: the resolved recipe and the library versions.

    Under --resume of a run that has them, the recipe and the data files (`files`: data.json's fingerprints) are
    compared with the run's: a change outside MAY_CHANGE is refused with the diff unless `allow_changes`. Nothing
    is written then: the returned ResumeRecord writes what changed once the checkpoint has loaded. None: the header
    was written (a fresh run, or one that never trained), and data.json is the data stage's to write.
    """
    new = recipe.model_dump(mode="json")
    if not resume or not has_progress(out) or not (out / RESOLVED).is_file():  # a fresh run, or one never trained
        write_yaml(out / RESOLVED, new)
        write_json(out / "versions.json", versions())
        return None
    old = with_new_keys(yaml.safe_load((out / RESOLVED).read_text(encoding="utf-8")) or {})
    old_files = json.loads((out / "data.json").read_text())["files"] if (out / "data.json").is_file() else files
    data_changes = []
    if _contents(old_files) == _contents(files):  # the same data, perhaps moved: its paths may change
        old, new = _without_data_paths(old), _without_data_paths(new)
    else:
        data_changes = sorted(k for k in {*old_files, *files} if old_files.get(k) != files.get(k))
    changes = {k: v for k, v in diff(old, new).items() if not _made_absolute(*v)}
    batch = ("trainer.per_device_batch_size", "trainer.gradient_accumulation_steps")
    same_batch = _global_batch(old) == _global_batch(new)  # e.g. 2 processes x 2 -> 1 process x 4
    refused = [k for k in changes if not k.startswith(MAY_CHANGE) and not (same_batch and k in batch)]
    if (refused or data_changes) and not allow_changes:
        lines = [f"  {k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused]
        lines += [f"  data file changed: {k} (sha256 differs from data.json)" for k in data_changes]
        raise UserError(f"--resume: the run in `{out}` was started with other inputs:\n" + "\n".join(lines) +
                        "\nRestore them, start a new run (another output.dir or --overwrite), or pass --resume "
                        "--allow-changes to continue with the new ones (recorded in resumes.jsonl).")
    # the recipe written back has its data paths (compared without them)
    return ResumeRecord(out, changes, data_changes, recipe.model_dump(mode="json") if changes else None)


def _made_absolute(old: Any, new: Any) -> bool:
    """A relative path of a run recorded before its paths were made absolute (pipeline.absolute_inputs)."""
    return (isinstance(old, str) and isinstance(new, str) and Path(new).is_absolute() and not Path(old).is_absolute()
            and Path(old).expanduser().resolve() == Path(new))


def _global_batch(recipe: dict) -> int | None:
    t, ln = recipe.get("trainer") or {}, recipe.get("launch") or {}
    try:
        return t["per_device_batch_size"] * t.get("gradient_accumulation_steps", 1) * ln.get("nproc", 1) * \
            ln.get("nnodes", 1)
    except (KeyError, TypeError):
        return None


def _contents(files: dict) -> list:
    """data.json's fingerprints without the paths: per dataset entry, its files' hashes (or hub coordinates)."""
    return [sorted(v.values()) if all(isinstance(x, str) for x in v.values()) else v for v in files.values()]


def _without_data_paths(recipe: dict) -> dict:
    data = recipe.get("data") or {}
    strip = {k: [{**spec, "path": None} for spec in data.get(k) or []] for k in ("train", "eval")}
    return {**recipe, "data": {**data, **strip}}


def with_new_keys(old: dict) -> dict:
    """A run's recorded recipe with the keys a newer tunekit added (absent from it) set to their defaults, so that a
    run started by an older version resumes without a change it never made (`data.drop_text_beside_tool_calls:
    None -> False`); as it is when it no longer validates (the diff then shows what differs)."""
    from pydantic import ValidationError

    from tunekit.recipe.schema import Recipe

    try:
        filled = Recipe.model_validate(old).model_dump(mode="json")
    except (ValidationError, ValueError, UserError):
        return old

    def add_missing(have: Any, full: Any) -> Any:
        if not (isinstance(have, dict) and isinstance(full, dict)):
            return have
        return {**{k: v for k, v in full.items() if k not in have},
                **{k: add_missing(v, full.get(k)) for k, v in have.items()}}

    return add_missing(old, filled)


def diff(old: Any, new: Any, prefix: str = "") -> dict[str, list]:
    """Dotted key -> [old, new] for every leaf that differs (lists compare whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, list] = {}
        for k in [*old, *(k for k in new if k not in old)]:
            out.update(diff(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    return {} if old == new else {prefix.rstrip("."): [old, new]}


def finished(out: Path, recipe: Recipe) -> str | None:
    """Why `--resume` has nothing to do (the run wrote summary.json and its length did not change), or None."""
    if not (out / "summary.json").is_file() or not (out / RESOLVED).is_file():
        return None
    old = (yaml.safe_load((out / RESOLVED).read_text(encoding="utf-8")) or {}).get("trainer", {})
    t = recipe.trainer
    if old.get("max_steps") != t.max_steps or old.get("num_epochs") != t.num_epochs:
        return None
    step = json.loads((out / "summary.json").read_text()).get("global_step")
    return (f"`{out}` already finished ({step} steps; see summary.json): nothing to resume. To train longer, "
            "raise trainer.max_steps and pass --resume; to start again, --overwrite.")


def write_yaml(path: Path, data: Any) -> None:
    write_whole(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))  # whole or not at all


def write_json(path: Path, data: Any) -> None:
    write_whole(path, json.dumps(data, indent=2, default=str) + "\n")


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("tunekit", "torch", "transformers", "datasets", "peft", "trl", "accelerate", "tokenizers",
                "deepspeed", "bitsandbytes", "flash-attn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def truncate_metrics(out: Path, step: int, stage: str | None = None) -> None:
    """On resume, drop metric lines logged after the checkpoint's step (they will be logged again).

    With `stage`, only that stage's lines (tagged `"stage": NAME`) are truncated; other stages' lines stay.
    """
    path = out / METRICS
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and
            (json.loads(ln).get("step", 0) <= step or (stage is not None and json.loads(ln).get("stage") != stage))]
    write_whole(path, "".join(k + "\n" for k in keep))
