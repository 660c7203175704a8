"""The environment check of scripts/gpu_session.sh: versions of what tunekit runs on, every requirement of
tunekit (pyproject.toml) and of those packages that the environment does not meet, and an import of each module
a training run needs. Exit 1 when an import fails (nothing would run), 0 otherwise: an unmet version pin is
printed, not fatal (the run may still work and its log says what was different)."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
SHOWN = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "liger-kernel",
         "flash-attn", "unsloth", "pyarrow", "tokenizers", "huggingface-hub", "pydantic", "typer")
IMPORTS = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic", "typer", "tunekit.pipeline",
           "tunekit.trainers.sft")


def version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def unmet(roots: list[Requirement]) -> list[str]:
    """Requirements (transitively, extras left out) not met by what is installed."""
    out, seen, todo = [], set(), list(roots)
    while todo:
        req = todo.pop()
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(key)
        have = version(req.name)
        if have is None:
            out.append(f"{req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(f"{req} (installed: {have})")
        todo += [Requirement(r) for r in md.requires(req.name) or []]
    return sorted(out)


def main() -> int:
    print("python", sys.version.split()[0], sys.executable)
    print("; ".join(f"{n} {v}" for n in SHOWN if (v := version(n))))
    import torch

    cuda = torch.cuda.is_available()
    print(f"torch CUDA {torch.version.cuda}; device {torch.cuda.get_device_name() if cuda else 'none (CPU)'}"
          + (f"; compute capability {torch.cuda.get_device_capability()}" if cuda else ""))
    block = re.search(r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.M | re.S)
    deps = re.findall(r'"([^"]+)"', block.group(1))  # [project] dependencies (tomllib is 3.11+; tunekit runs on 3.10)
    missing = unmet([Requirement(d) for d in deps])
    print("requirements not met: " + ("none" if not missing else "\n  " + "\n  ".join(missing)))
    failed = []
    for module in IMPORTS:
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001  (any import failure means the stages cannot run)
            failed.append(f"{module}: {type(e).__name__}: {e}")
    print("imports: " + ("ok" if not failed else "FAILED\n  " + "\n  ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
