"""User-facing errors and the one did-you-mean helper.

The CLI prints a `UserError` without a traceback and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Something the user can fix: a bad recipe, a missing file, bad data.

    The message is printed as-is, so it should name the file/field and say what to do.
    """

    exit_code = 2


class RunStopped(Exception):
    """A run stopped on a signal: the CLI prints the message (how to resume) and exits with `exit_code`
    (128 + the signal number: 130 for SIGINT, 143 for SIGTERM), without a traceback."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def closest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice `name` was most likely meant to be, or None when nothing is close.

    A choice with exactly the same letters wins first (a transposition such as `lroa` -> `lora`, which plain
    similarity ratios rank below `road`), then difflib's closest match.
    """
    choices = list(choices)
    same_letters = [c for c in choices if sorted(c) == sorted(name) and c != name]
    if same_letters:
        return same_letters[0]
    guess = difflib.get_close_matches(name, choices, n=1, cutoff=cutoff)
    return guess[0] if guess else None


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.6, prefix: str = "") -> str:
    """` Did you mean `X`?` (X with `prefix`) for the closest choice, or an empty string."""
    guess = closest(name, choices, cutoff)
    return f" Did you mean `{prefix}{guess}`?" if guess else ""
