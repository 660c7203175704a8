"""The shared console for human-readable output (stderr keeps stdout clean for `validate` output)."""

from __future__ import annotations

from rich.console import Console

# soft_wrap: long lines are not broken at 80 columns when stderr is a file or pipe (the terminal wraps its own)
console = Console(stderr=True, highlight=False, soft_wrap=True)
