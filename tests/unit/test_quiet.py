"""The quiet console drops library warnings about what the library handles itself, and nothing else."""

from __future__ import annotations

import logging
import warnings

import pytest

from tunekit import quiet


def test_a_dropped_library_warning_is_not_shown_and_others_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNEKIT_VERBOSE", raising=False)
    for key, value in quiet.ENV.items():  # restored after the test
        monkeypatch.setenv(key, value)
    for name in quiet.QUIET_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        quiet.quiet_libraries()
        # peft, at every generate call of a prompt-tuning model (tunekit chat / eval): it ignores them itself
        warnings.warn("Position ids are not supported for parameter efficient tuning. Ignoring position ids.",
                      UserWarning, stacklevel=1)
        warnings.warn("the user's own data looks odd", UserWarning, stacklevel=1)
    assert [str(w.message) for w in got] == ["the user's own data looks odd"]
