"""Reward functions: answer extraction, matching, the TRL wrapper's checks, user-function signature checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunekit.errors import UserError
from tunekit.eval import metrics as eval_metrics
from tunekit.trainers.reft_schema import (
    ExactMatchReward,
    FormatReward,
    NumericMatchReward,
    PythonReward,
    RegexMatchReward,
)
from tunekit.trainers.rewards import (
    RewardFunction,
    build_reward_funcs,
    exact_match,
    extract_number,
    numeric_match,
    regex_match,
    score,
)


@pytest.mark.parametrize("text,want", [
    ("3 + 4 = 7\n#### 7", 7.0),
    ("so 12 apples.\n#### 1,234", 1234.0),
    ("#### -3.5 is it", -3.5),
    ("first 3 then 41 and finally 42", 42.0),
    ("the answer is .5", 0.5),
    ("no digits here", None),
    ("#### none", None),
    ("count 1,2,3", 3.0),  # a list, not 123
    # MATH / NuminaMath / Qwen-Math answers are boxed; before, the last number of `\frac{1}{4}` (4) was read
    (r"so $x = \boxed{\frac{1}{4}}$", 0.25),
    (r"\boxed{-\dfrac{3}{4}}. Check: 4 + 1 = 5", -0.75),
    (r"\boxed{1,234} people", 1234.0),
    (r"\boxed{3/4}", 0.75),
    (r"\boxed{50\%}", 50.0),
    (r"\boxed{x^2 + 1}", None),  # an expression is not a number
    (r"\frac{3}{4}", 0.75),  # an answer column written in LaTeX
])
def test_extract_number(text: str, want: float | None) -> None:
    assert extract_number(text) == want


def test_boxed_answers_are_compared_as_answers() -> None:
    """`\frac{1}{4}` and `\frac{3}{4}` both ended in 4 and matched; a boxed 4 followed by a check's 5 did not."""
    assert not numeric_match(r"so the answer is \boxed{\frac{1}{4}}", r"\frac{3}{4}")
    assert numeric_match(r"so the answer is \boxed{\frac{3}{4}}", r"\frac{3}{4}")
    assert numeric_match(r"the answer is \boxed{4}. Check: 4+1=5", "4")
    assert exact_match(r"\boxed{\text{Paris}}", "\\text{Paris}") and not exact_match(r"\boxed{Rome}", "Paris")


@pytest.mark.parametrize(("completion", "answer", "want"), [
    (r"\boxed{2}", "(1, 2)", False), ("#### 1", "x^2+1", False), (r"\boxed{1}", "x^2+1", False),
    (r"\boxed{3}", r"\sqrt{3}", False), (r"so \boxed{(1,2)}", "(1, 2)", True), (r"\boxed{\sqrt{3}}", r"\sqrt{3}", True),
    (r"\boxed{Monday}", r"\text{Monday}", True), (r"\boxed{50\%}", "50", True), ("x = 1,234", "1234", True),
    (r"\boxed{3}", r"\boxed{x = 3}", False), ("", "", False)])
def test_a_ground_truth_that_is_not_one_number_is_compared_as_text(completion: str, answer: str, want: bool) -> None:
    """MATH answers such as `(1, 2)`, `x^2+1`, `\\sqrt{3}` were read by their last number (2, 1, 3): a completion
    boxing that number got reward 1. The ground truth must be one number to be compared as one; else the final
    answers are compared as text (LaTeX wrappers and spacing aside), by the reward and the eval metric alike."""
    assert numeric_match(completion, answer) is want
    assert eval_metrics.numeric_match(completion, answer) == float(want)


def test_numeric_match_with_tolerance() -> None:
    assert numeric_match("... #### 42", "42") and numeric_match("it is 42.0", "#### 42")
    assert not numeric_match("#### 41", "42")
    assert numeric_match("#### 41.99", "42", tolerance=0.05) and not numeric_match("#### 41.9", "42", tolerance=0.05)
    assert numeric_match("#### 101", "100", relative=0.02)
    assert not numeric_match("I don't know", "7")


def test_exact_and_regex_match() -> None:
    assert exact_match(r"\boxed{Monday}", r"\text{Monday}") and exact_match("#### 72", "$72")
    assert exact_match("reasoning\n#### Paris", "paris") and not exact_match("#### Paris", "paris", ignore_case=False)
    assert regex_match("answer: B", r"answer: ([A-D])", "B") and not regex_match("answer: C", r"answer: ([A-D])", "B")
    assert regex_match("has a #### line", r"####") and not regex_match("nothing", r"####")


def test_builtin_rewards_and_weighted_sum() -> None:
    specs = [NumericMatchReward(type="numeric_match", weight=1.0), FormatReward(type="format", weight=0.5),
             ExactMatchReward(type="exact_match", weight=0.0),
             RegexMatchReward(type="regex_match", pattern=r"= (\d+)", column="answer", weight=2.0)]
    funcs, weights = build_reward_funcs(specs)
    assert [f.__name__ for f in funcs] == ["numeric_match", "format", "exact_match", "regex_match"]
    completions = ["3 + 4 = 7\n#### 7", "3 + 4 = 8", "#### 7 apples"]
    totals = score(funcs, weights, ["q"] * 3, completions, {"answer": ["7", "7", "7"]})
    assert totals == [1 + 0.5 + 2, 0.0, 1.0]


def test_conversational_completions_are_read_as_text() -> None:
    (f,), _ = build_reward_funcs([NumericMatchReward(type="numeric_match")])
    out = f(prompts=[[{"role": "user", "content": "q"}]], completions=[[{"role": "assistant", "content": "#### 5"}]],
            answer=["5"], completion_ids=[[1]], trainer_state=None)
    assert out == [1.0]


def _user(tmp_path: Path, body: str, name: str = "score") -> RewardFunction:
    path = tmp_path / "rewards.py"
    path.write_text(body)
    (f,), _ = build_reward_funcs([PythonReward(type="python", file=str(path), function=name)])
    return f


def test_user_function_receives_text_and_columns(tmp_path: Path) -> None:
    f = _user(tmp_path, "def score(completions, answer, prompts, **kwargs):\n"
                        "    return [float(c.endswith(a)) + len(p) * 0 for c, a, p in zip(completions, answer, prompts)]\n")
    assert f(prompts=["a", "b"], completions=["x 1", "x 2"], answer=["1", "3"]) == [1.0, 0.0]


def test_raising_user_function_names_itself_the_example_and_the_exception(tmp_path: Path) -> None:
    f = _user(tmp_path, "def score(completions, **kwargs):\n"
                        "    return [1.0 / (len(c) - 3) for c in completions]\n")
    with pytest.raises(UserError) as info:
        f(prompts=["p0", "p1"], completions=["long one", "abc"])
    msg = str(info.value)
    assert "`score`" in msg and "example 1" in msg and "'abc'" in msg and "ZeroDivisionError" in msg
    # where in the user's file (the exception alone did not say which line of a longer function failed)
    assert f"(at {tmp_path / 'rewards.py'}:2: return [1.0 / (len(c) - 3) for c in completions])" in msg


@pytest.mark.parametrize("body,needle", [
    ("def score(completions, **kwargs):\n    return [1.0]\n", "returned 1 values for 2"),
    ("def score(completions, **kwargs):\n    return ['1', 2]\n", "returned '1'"),
    ("def score(completions, **kwargs):\n    return 1.0\n", "returned float"),
    ("def score(completions, **kwargs):\n    return [float('nan'), 1]\n", "nan"),
])
def test_wrong_return_values_are_errors(tmp_path: Path, body: str, needle: str) -> None:
    f = _user(tmp_path, body)
    with pytest.raises(UserError, match="`score`") as info:
        f(prompts=["p", "q"], completions=["a", "b"])
    assert needle in str(info.value)


@pytest.mark.parametrize("body,needle", [
    ("def other(completions, **kwargs):\n    return []\n", "no top-level function `score`"),
    ("def score(completions):\n    return []\n", "`**kwargs`"),
    ("def score(prompts, **kwargs):\n    return []\n", "must accept `completions`"),
    ("async def score(completions, **kwargs):\n    return []\n", "async"),
    ("def score(completions, **kwargs)\n    return []\n", "syntax error"),
])
def test_user_function_signature_checked_without_running_it(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "rewards.py"
    path.write_text("raise SystemExit('the file must not be executed at validate time')\n" + body)
    with pytest.raises(ValueError, match="rewards.py") as info:
        PythonReward(type="python", file=str(path), function="score")
    assert needle in str(info.value)


def test_valid_user_function_validates_without_running(tmp_path: Path) -> None:
    path = tmp_path / "rewards.py"
    path.write_text("raise SystemExit('not executed')\ndef score(completions, answer=None, **kwargs):\n    return []\n")
    PythonReward(type="python", file=str(path), function="score")
