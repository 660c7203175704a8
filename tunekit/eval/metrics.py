"""Answer metrics for generation tasks: pure functions of (prediction, reference) -> score in [0, 1].

`extract_number` is the numeric-answer parser shared with reward functions: it reads `#### 42` (GSM8K
style) first, then the last `\\boxed{}`, then falls back to the last number in the text; commas in numbers, signs and
decimals are handled. A reference that is not one number is compared as text (`answers.answer_number`).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable

from tunekit.eval.calls import tool_calls_in
from tunekit.trainers import rewards

extract_number = rewards.extract_number  # one answer parser for eval metrics and ReFT rewards


def normalize(text: str) -> str:
    """Lower-case, drop punctuation at the ends, collapse whitespace."""
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def exact_match(pred: str, ref: str, **_: object) -> float:
    return float(normalize(pred) == normalize(ref))


def numeric_match(pred: str, ref: str, **_: object) -> float:
    """The ReFT reward's numeric match (same parser, same tolerance rule), as a 0/1 metric."""
    return float(rewards.numeric_match(pred, ref, tolerance=1e-6, relative=1e-6))


def contains(pred: str, ref: str, **_: object) -> float:
    return float(normalize(ref) in normalize(pred))


def regex_match(pred: str, ref: str, pattern: str = r"(?<!\w){answer}(?!\w)", **_: object) -> float:
    """1 when `pattern` (with `{answer}` replaced by the escaped reference) occurs in the prediction."""
    return float(re.search(pattern.replace("{answer}", re.escape(ref.strip())), pred) is not None)


def token_f1(pred: str, ref: str, **_: object) -> float:
    p, r = tokens(pred), tokens(ref)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str, **_: object) -> float:
    """ROUGE-L F1 over word tokens (longest common subsequence)."""
    p, r = tokens(pred), tokens(ref)
    lcs = lcs_length(p, r) if p and r else 0
    if lcs == 0:
        return float(not p and not r)
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def tool_call_match(pred: str, ref: str, **_: object) -> float:
    """1 when the prediction makes exactly the reference's tool calls: same names and arguments (compared as parsed
    JSON, so spacing and key order do not matter), in order. A reference without calls matches a prediction
    without calls."""
    return float(tool_calls_in(pred) == tool_calls_in(ref))


def tool_call_name(pred: str, ref: str, **_: object) -> float:
    """1 when the prediction calls the reference's tools (names, in order), whatever the arguments."""
    return float([c["name"] for c in tool_calls_in(pred)] == [c["name"] for c in tool_calls_in(ref)])


def tool_call_format(pred: str, ref: str, **_: object) -> float:
    """1 when the prediction holds at least one well-formed tool call (a name and an arguments object) and the
    reference does too, or neither does: the call format is learned, whatever the arguments."""
    return float(bool(tool_calls_in(pred)) == bool(tool_calls_in(ref)))


METRICS: dict[str, Callable[..., float]] = {
    "tool_call_match": tool_call_match,
    "tool_call_name": tool_call_name,
    "tool_call_format": tool_call_format,
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "contains": contains,
    "regex": regex_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
}


def vote_key(pred: str, metric: str) -> str:
    """What majority voting compares: the extracted number for numeric_match, else the normalized text."""
    if metric == "numeric_match":
        n = extract_number(pred)
        return "" if n is None else repr(n)
    return normalize(pred)


def majority(preds: list[str], metric: str) -> str:
    """The most common answer among k samples (ties go to the earliest sample)."""
    keys = [vote_key(p, metric) for p in preds]
    counts = Counter(keys)
    best = max(keys, key=lambda k: (counts[k], -keys.index(k)))
    return preds[keys.index(best)]


DEFAULT_PATTERN = r"(?<!\w){answer}(?!\w)"  # the answer, not inside a longer word or number


def score_samples(samples: list[str], ref: str, metric: str, pattern: str = DEFAULT_PATTERN) -> dict[str, float]:
    """Scores for one prompt's k samples: mean (pass@1 estimate), pass@k (best sample) and majority@k."""
    fn = METRICS[metric]
    scores = [fn(s, ref, pattern=pattern) for s in samples]
    out = {metric: sum(scores) / len(scores)}
    if len(samples) > 1:
        k = len(samples)
        out[f"{metric}_pass@{k}"] = max(scores)
        out[f"{metric}_maj@{k}"] = fn(majority(samples, metric), ref, pattern=pattern)
    return out
