"""User-facing errors: the CLI prints these without a traceback and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a bad recipe, a missing file, bad data.

    The message is printed as-is, so it should name the file/field and say what to do.
    """

    exit_code = 2
