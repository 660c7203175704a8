"""Rewards for online RL: answer extraction (pure functions, shared with eval) and TRL reward-function wrappers.

TRL's GRPO/RLOO call each reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)`
and expect one float (or None) per completion. `build_reward_funcs` wraps every recipe reward so that:
  - completions and prompts reach the scorer as plain strings,
  - a scorer that raises stops the run with a UserError naming the function, the example and the exception,
  - a wrong number of values or a non-number is a UserError too (never a silent zero reward).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunekit.answers import answer_number, answer_text, extract_number, final_answer
from tunekit.errors import UserError
from tunekit.trainers.reft_schema import check_reward_signature

# the prompt_answer columns every reward function receives (as keyword lists, one value per completion), in the RL
# stage's sampling, in online DPO and in the held-out reward alike (the RL stage used to leave `solution` out)
REWARD_COLUMNS = ("prompt", "question", "answer", "solution")


def numeric_match(completion: str, answer: str | float, tolerance: float = 1e-6, relative: float = 0.0) -> bool:
    """True when the completion's number equals the answer's within `tolerance + relative * |answer|`. An answer
    that is not one number (MATH's `(1, 2)`, `x^2+1`, `\\text{Monday}`) is compared as text with the completion's
    final answer (`answers.answer_text`): reading its last number rewarded wrong completions."""
    want = answer if isinstance(answer, (int, float)) else answer_number(str(answer))
    if want is None:
        return answer_text(completion) == answer_text(str(answer)) != ""
    got = extract_number(completion)
    return got is not None and abs(got - want) <= tolerance + relative * abs(want)


def exact_match(completion: str, answer: str, ignore_case: bool = True) -> bool:
    """The completion's final answer equals the answer as text; with `ignore_case` (default) LaTeX wrappers
    (`\\text{}`, `$`), spacing and case aside (`answers.answer_text`), so `\\boxed{Monday}` matches `\\text{Monday}`."""
    if ignore_case:
        return answer_text(completion) == answer_text(str(answer))
    return final_answer(completion) == final_answer(str(answer))


def regex_match(completion: str, pattern: str, target: str | None = None) -> bool:
    matches = list(re.finditer(pattern, completion))
    if not matches:
        return False
    if target is None:
        return True
    last = matches[-1]
    got = last.group(1) if last.groups() else last.group()
    return (got or "").strip() == str(target).strip()


def completion_text(c: Any) -> str:
    """TRL passes conversational completions as [{role, content}, ...]; plain ones as strings."""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(m.get("content", "") for m in c if isinstance(m, dict))
    return str(c)


def prompt_text(p: Any) -> str:
    if isinstance(p, list):
        users = [m.get("content", "") for m in p if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else completion_text(p)
    return str(p)


# ------------------------------------------------------------------------------------------------ recipe -> scorer

def _scorer(spec: Any) -> tuple[str, Callable[..., list]]:
    """(display name, f(completions: list[str], **columns) -> list of rewards) for one recipe reward."""
    t = spec.type
    if t == "numeric_match":
        return "numeric_match", lambda completions, **kw: [
            float(numeric_match(c, a, spec.tolerance, spec.relative_tolerance))
            for c, a in zip(completions, _column(kw, spec.column))]
    if t == "exact_match":
        return "exact_match", lambda completions, **kw: [
            float(exact_match(c, a, spec.ignore_case)) for c, a in zip(completions, _column(kw, spec.column))]
    if t == "regex_match":
        def regex(completions: list[str], **kw: Any) -> list:
            targets = _column(kw, spec.column) if spec.column else [None] * len(completions)
            return [float(regex_match(c, spec.pattern, tg)) for c, tg in zip(completions, targets)]
        return "regex_match", regex
    if t == "format":
        pat = re.compile(spec.pattern)
        return "format", lambda completions, **kw: [float(pat.fullmatch(c) is not None) for c in completions]
    if t == "python":
        return spec.function, load_user_function(Path(spec.file), spec.function)
    raise AssertionError(f"unknown reward type {t}")


def _column(kw: dict, name: str) -> list:
    if name not in kw:
        found = ", ".join(k for k in kw if k not in ("prompts", "trainer_state", "log_extra", "log_metric"))
        raise UserError(f"trainer.rl.rewards: reward column `{name}` is not in the data (columns: {found})")
    return kw[name]


def load_user_function(path: Path, name: str) -> Callable[..., list]:
    """Import the user's reward file (only the path the recipe names) and return the function."""
    import importlib.util

    try:
        check_reward_signature(path, name)
    except ValueError as e:
        raise UserError(f"trainer.rl.rewards: {e}") from None
    spec = importlib.util.spec_from_file_location(f"tunekit_user_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:
        raise UserError(f"trainer.rl.rewards: importing `{path}` failed: {type(e).__name__}: {e}") from None
    return getattr(module, name)


def _user_line(e: BaseException) -> str:
    """` (at FILE:LINE: CODE)`: the deepest frame of the traceback outside tunekit, i.e. in the user's reward file
    (or a library it called)."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/tunekit/" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.filename}:{f.lineno}: {(f.line or '').strip()})"


class RewardFunction:
    """One recipe reward in the form TRL calls; `__name__` is what TRL logs as rewards/<name>/mean."""

    def __init__(self, name: str, scorer: Callable[..., list]) -> None:
        self.__name__ = name
        self._scorer = scorer

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        texts = [completion_text(c) for c in completions]
        columns = {k: v for k, v in kwargs.items() if k not in ("completion_ids", "trainer_state", "log_extra",
                                                               "log_metric", "environments")}
        columns["prompts"] = [prompt_text(p) for p in prompts]
        try:
            values = self._scorer(texts, **columns)
        except UserError:
            raise
        except Exception as e:
            i = self._first_failing(texts, columns)
            raise UserError(self._where(i, texts, columns) + f" raised {type(e).__name__}: {e}{_user_line(e)}") from e
        return self._check(values, texts, columns)

    def _first_failing(self, texts: list[str], columns: dict) -> int:
        for i in range(len(texts)):
            try:
                self._scorer(texts[i:i + 1], **{k: v[i:i + 1] for k, v in columns.items()})
            except Exception:
                return i
        return 0

    def _where(self, i: int, texts: list[str], columns: dict) -> str:
        prompt = columns["prompts"][i] if i < len(columns["prompts"]) else "?"
        return (f"reward function `{self.__name__}` on example {i} (prompt: {prompt[:200]!r}, "
                f"completion: {texts[i][:200]!r})") if i < len(texts) else f"reward function `{self.__name__}`"

    def _check(self, values: Any, texts: list[str], columns: dict) -> list[float | None]:
        if not isinstance(values, (list, tuple)):
            raise UserError(f"reward function `{self.__name__}` returned {type(values).__name__}; it must return "
                            f"a list with one number per completion ({len(texts)} here)")
        if len(values) != len(texts):
            raise UserError(f"reward function `{self.__name__}` returned {len(values)} values for {len(texts)} "
                            "completions; it must return exactly one number (or None) per completion")
        out: list[float | None] = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v)):
                raise UserError(self._where(i, texts, columns) + f" returned {v!r}; rewards must be numbers "
                                "(int or float, not NaN) or None to skip a completion")
            out.append(float(v))
        return out


def build_reward_funcs(specs: list) -> tuple[list[RewardFunction], list[float]]:
    """(reward functions for TRL's reward_funcs, their weights for reward_weights). Names are made unique."""
    funcs, weights, seen = [], [], {}
    for spec in specs:
        name, scorer = _scorer(spec)
        seen[name] = seen.get(name, 0) + 1
        funcs.append(RewardFunction(name if seen[name] == 1 else f"{name}_{seen[name]}", scorer))
        weights.append(spec.weight)
    return funcs, weights


def score(funcs: list[RewardFunction], weights: list[float], prompts: list, completions: list[str],
          columns: dict) -> list[float]:
    """Weighted total reward per completion (None counts as 0), as used for held-out evaluation."""
    total = [0.0] * len(completions)
    for f, w in zip(funcs, weights):
        for i, v in enumerate(f(prompts=prompts, completions=completions, **columns)):
            total[i] += w * (v or 0.0)
    return total
