"""Checkpoints: where they are, whether one is complete (its manifest: files, sizes, sha256; or, for a run
recorded before manifests, each file's own structure), the manifest written after every save, and setting an
incomplete one aside to checkpoints/torn/. `resume.py` decides which checkpoint a run goes on from."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tunekit.files import file_sha256
from tunekit.paths import as_umask_allows

CHECKPOINTS = "checkpoints"


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step of a `checkpoint-N` directory."""
    return int(checkpoint.name.split("-")[-1])


MANIFEST = "tunekit-manifest.json"  # written last into each checkpoint: its files, their sizes and sha256
TORN = "torn"  # checkpoints/torn/: incomplete checkpoints set aside by --resume


def checkpoints(out: Path) -> list[Path]:
    """The `checkpoint-N` directories of a run (or stage) dir, oldest first."""
    found = [p for p in (out / CHECKPOINTS).glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and p.is_dir()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(out: Path, deep: bool = False) -> Path | None:
    """The newest complete checkpoint (see `checkpoint_problem`; `deep`: its files' sha256 checked too)."""
    ckpts = checkpoints(out)
    legacy = not any((c / MANIFEST).is_file() for c in ckpts)
    return next((c for c in reversed(ckpts) if checkpoint_problem(c, legacy, deep) is None), None)


def torn_checkpoints(out: Path, deep: bool = False) -> list[tuple[Path, str]]:
    """(checkpoint, what is wrong) for every checkpoint newer than the newest complete one."""
    ckpts, latest = checkpoints(out), latest_checkpoint(out, deep)
    legacy = not any((c / MANIFEST).is_file() for c in ckpts)
    newer = [c for c in ckpts if latest is None or checkpoint_step(c) > checkpoint_step(latest)]
    return [(c, checkpoint_problem(c, legacy, deep) or "incomplete") for c in newer]


def checkpoint_problem(ckpt: Path, legacy: bool = False, deep: bool = False) -> str | None:
    """Why a checkpoint cannot be resumed from, or None: trainer_state.json must parse, and every file the manifest
    lists must have the size it had when the save finished (`deep`: and the same sha256, which catches a file
    damaged in place, e.g. on a copy between machines). Without a manifest the save did not finish, unless the run
    predates manifests (`legacy`: no checkpoint of the run has one); then each file's own structure is checked
    (`file_problem`: a truncated weights or torch file)."""
    parsed = {}
    for name in ("trainer_state.json", *([] if legacy else [MANIFEST])):
        try:
            parsed[name] = json.loads((ckpt / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{name} is missing" + (" (the save did not finish)" if name == MANIFEST else "")
        except (OSError, ValueError) as e:
            return f"{name} does not parse ({e.__class__.__name__})"
    if not isinstance(parsed["trainer_state.json"], dict) or "global_step" not in parsed["trainer_state.json"]:
        return "trainer_state.json has no global_step"
    if legacy:
        problems = (file_problem(p, str(p.relative_to(ckpt))) for p in sorted(ckpt.rglob("*")) if p.is_file())
        return next((problem for problem in problems if problem), None)
    files = parsed.get(MANIFEST, {}).get("files", {}) if isinstance(parsed.get(MANIFEST, {}), dict) else {}
    for name, entry in files.items():
        size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (entry, None)
        p = ckpt / name
        found = p.stat().st_size if p.is_file() else None
        if found != size:
            return f"{name} is missing" if found is None else f"{name} has {found:,} bytes, the save wrote {size:,}"
        if deep and digest and file_sha256(p) != digest:
            return f"{name} does not have the content the save wrote (sha256 differs)"
    return None


def file_problem(path: Path, name: str) -> str | None:
    """What a checkpoint file's own structure says is wrong with it (`name`: how to call it), or None: a
    safetensors file is as long as its header says, a torch file (a zip) ends with its zip directory, a JSON file
    parses. Cheap (headers and tails): what a checkpoint without a manifest is checked with."""
    import zipfile

    try:
        size = path.stat().st_size
        if path.suffix == ".safetensors":
            return _safetensors_problem(path, name, size)
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        if zipped and not zipfile.is_zipfile(path):
            return f"{name} is truncated ({size:,} bytes, without the zip directory a torch file ends with)"
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{name} cannot be read ({e.__class__.__name__})"
    return None


def _safetensors_problem(path: Path, name: str, size: int) -> str | None:
    """A safetensors file: an 8-byte header length, the JSON header, then the tensors' bytes it places."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else size
        if n > size - 8:
            return f"{name} is truncated ({size:,} bytes, shorter than its header)"
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{name}'s header does not parse (the file is damaged)"
    if size != 8 + n + end:
        what = "is truncated" if size < 8 + n + end else "does not match its header"
        return f"{name} {what} ({size:,} bytes, its header describes {8 + n + end:,})"
    return None


def write_manifest(ckpt: Path) -> None:
    """Record the checkpoint's files, sizes and sha256; each file is flushed to disk (fsync) first, and the manifest
    is written last (to a temp name, flushed, then renamed), so a checkpoint with a manifest is a complete one, also
    after a power loss."""
    files = {}
    for p in sorted(ckpt.rglob("*")):
        if p.is_file() and not p.name.startswith(MANIFEST):
            files[str(p.relative_to(ckpt))] = {"size": p.stat().st_size, "sha256": _synced_sha256(p)}
    tmp = ckpt / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"files": files}, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(ckpt / MANIFEST)
    _fsync_dir(ckpt)


def _synced_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        os.fsync(f.fileno())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def set_aside(ckpt: Path) -> Path:
    """Move an incomplete checkpoint to checkpoints/torn/ (out of the trainer's `checkpoint-*` rotation)."""
    dest = ckpt.parent / TORN / ckpt.name
    n = 1
    while dest.exists():
        dest, n = ckpt.parent / TORN / f"{ckpt.name}.{n}", n + 1
    dest.parent.mkdir(exist_ok=True)
    ckpt.rename(dest)
    return dest


def checkpoint_callback() -> Any:
    """A TrainerCallback writing each checkpoint's manifest once every process finished saving (rank 0 writes)."""
    from transformers import TrainerCallback

    class ManifestWriter(TrainerCallback):
        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank's files (ZeRO shards) are written
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():
                # TRL's model card ("fine-tuned version of [None]") says nothing true about the run; removed before
                # the manifest lists the files, so a later cleanup cannot make a good checkpoint look torn
                (ckpt / "README.md").unlink(missing_ok=True)
                as_umask_allows(ckpt)
                write_manifest(ckpt)

    return ManifestWriter()
