"""Read dataset files into rows, naming the file and line of anything malformed."""

from __future__ import annotations

import json
from pathlib import Path

from tunekit.errors import UserError

ASSETS_DATA = Path(__file__).resolve().parent.parent / "assets" / "data"


def resolve_path(path: str) -> Path:
    if path.startswith("builtin:"):
        p = ASSETS_DATA / path[len("builtin:") :]
        if not p.exists():
            shipped = sorted(str(f.relative_to(ASSETS_DATA)) for f in ASSETS_DATA.rglob("*.jsonl"))
            raise UserError(f"data: no shipped dataset `{path}`; shipped: {', '.join('builtin:' + s for s in shipped)}")
        return p
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data: file not found: {path} (relative paths resolve against {Path.cwd()})")
    return p


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: each line must be a JSON object, found {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: the dataset is empty")
    return rows


def read_rows(path: str) -> tuple[Path, list[dict]]:
    p = resolve_path(path)
    if p.suffix not in (".jsonl", ".json"):
        raise UserError(f"data: `{path}`: only JSON Lines files (.jsonl) are supported so far")
    return p, read_jsonl(p)
