"""`tunekit preprocess --show N` for the preference and ReFT recipes shipped in recipes/."""

from __future__ import annotations

import pytest

from tests.conftest import RECIPES, run_cli


@pytest.mark.parametrize(("recipe", "shown"), [
    ("dpo", ("prompt: ", "chosen: [[", "rejected: [[")),
    ("kto", ("prompt: ", "completion (")),
    ("reft", ("question: ", "solution (warm-up): ", "answer: ")),
])
def test_preprocess_shows_preference_and_reft_rows(recipe: str, shown: tuple[str, ...]) -> None:
    proc = run_cli("preprocess", RECIPES / f"{recipe}.yaml", "--show", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "rows in" in out and "builtin:arith/" in out
    assert out.count("── example ") == 2 and "example 3" not in out
    for text in shown:
        assert out.count(text) >= 2, text
    assert "<|im_end|>\n]]" in out  # answers are marked up to and including the end-of-turn token
