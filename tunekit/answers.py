"""Reading the final answer out of a worked solution: the one parser for ReFT/online-DPO rewards, eval metrics and
the check that a `prompt_answer` row's solution ends in its own answer.

Where the answer is, in order: after the last `####` (GSM8K); inside the last `\\boxed{...}` (MATH, NuminaMath,
Qwen-Math, DeepSeek-R1 write it there); else the text's last number. Numbers may have thousands separators
(`1,234`), decimals, a sign, or be LaTeX fractions (`\\frac{3}{4}`, `-\\dfrac{1}{2}`); in a boxed answer also `3/4`,
`$...$`, `\\%` and spacing commands. Pure functions, no imports beyond `re`.
"""

from __future__ import annotations

import re

MARK = "####"
_NUM = r"(?:-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+)"  # 1,234 is one number; 1,2,3 is three
_VALUE = re.compile(rf"(-?)\\[dt]?frac\{{\s*({_NUM})\s*\}}\{{\s*({_NUM})\s*\}}|({_NUM})")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_NOISE = re.compile(r"\$|\\[!,;: ]|\\left|\\right|\\%|%|\^\{?\\circ\}?|\\text\{[^{}]*\}|\s")


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def values(text: str) -> list[float]:
    """Every number in `text`, fractions `\\frac{a}{b}` as a/b, in order."""
    out = []
    for m in _VALUE.finditer(text):
        if m.group(4) is not None:
            v = _to_float(m.group(4))
        else:
            num, den = _to_float(m.group(2)), _to_float(m.group(3))
            v = None if num is None or not den else (-1 if m.group(1) else 1) * num / den
        if v is not None:
            out.append(v)
    return out


def last_boxed(text: str) -> str | None:
    """The contents of the last `\\boxed{...}` (braces balanced), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, i = 1, starts[-1]
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # never closed (a cut-off output)


def boxed_number(content: str) -> float | None:
    """A boxed answer as one number: `42`, `1,234`, `\\frac{3}{4}`, `3/4`, `-0.5`, `50\\%`; None for anything else
    (an expression, several values)."""
    plain = _LATEX_NOISE.sub("", content)
    if re.fullmatch(rf"(?:{_NUM})/(?:{_NUM})", plain):
        num, den = (_to_float(p) for p in plain.split("/"))
        return None if num is None or not den else num / den
    if re.fullmatch(rf"{_NUM}|-?\\[dt]?frac\{{{_NUM}\}}\{{{_NUM}\}}", plain):
        found = values(plain)
        return found[0] if len(found) == 1 else None
    return None


def extract_number(text: str) -> float | None:
    """The number after the last `####`; else the number boxed last; else the last number in the text."""
    if MARK in text:
        found = values(text.rsplit(MARK, 1)[1])
        return found[0] if found else None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed_number(boxed)
    found = values(text)
    return found[-1] if found else None


def answer_number(answer: str) -> float | None:
    """A ground-truth answer as one number, read strictly: the text after `####`, else the last boxed answer, else
    the whole answer must be one number (`72`, `$1,234$`, `\\frac{3}{4}`, `50\\%`). None for anything else: the
    last-number fallback of `extract_number` is for a model's free text, and would read MATH's `(1, 2)` as 2,
    `x^2+1` as 1 and `\\sqrt{3}` as 3 (a completion boxing that number was rewarded)."""
    text = answer.rsplit(MARK, 1)[1] if MARK in answer else answer
    boxed = last_boxed(text)
    return boxed_number(boxed if boxed is not None else text)


def answer_text(text: str) -> str:
    """A final answer as text for comparing: after `####` / inside `\\boxed{}`, `\\text{}` unwrapped, `$`, spacing
    commands, `%` and whitespace removed, lower-cased (`\\text{Monday}` and `\\boxed{Monday}` are `monday`)."""
    return _LATEX_NOISE.sub("", _TEXT.sub(r"\1", final_answer(text))).lower()


def final_answer(text: str) -> str:
    """The answer's text: after the last `####`, else inside the last `\\boxed{}`, else the whole text; stripped."""
    if MARK in text:
        return text.rsplit(MARK, 1)[1].strip()
    boxed = last_boxed(text)
    return (boxed if boxed is not None else text).strip()


def marked(text: str) -> bool:
    """Whether `text` marks its final answer (`####` or `\\boxed{}`), so that answer can be read from it."""
    return MARK in text or last_boxed(text) is not None


def same_answer(solution: str, answer: str) -> bool:
    """Whether a worked solution (or a completion) ends in `answer`: as numbers when the answer is one number
    (`answer_number`) and the solution's answer reads as one (`extract_number`), else as text (`answer_text`)."""
    want = answer_number(answer)
    got = extract_number(solution) if want is not None else None
    if got is not None and want is not None:
        return abs(got - want) <= 1e-6 * max(1.0, abs(want))
    return answer_text(solution) == answer_text(answer)
