"""The shared console for human-readable output (stderr keeps stdout clean for `validate` output)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)
