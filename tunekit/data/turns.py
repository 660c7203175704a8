"""One assistant turn as the model produces it at inference: the rendered context and the turn's trained text.

The rule stays "the trained text of turn i is what rendering messages[:i+1] adds to rendering messages[:i] with
the generation prompt". Two families' real templates break the rule for reasons the template itself makes clear,
and are handled here, each checked so it never applies by accident:

- **The system message moves** (Mistral v0.3: it is rendered inside the *last* user turn, and dropped from a
  conversation ending with an assistant turn). The context is the template's own generation-prompt rendering
  (system inside the last user turn); the turn is rendered with the system text already in that user turn, and
  accepted only when that rendering starts with the very same context.
- **The generation prompt opens the reasoning block** (DeepSeek-R1 and -V3: `<｜Assistant｜><think>\\n`) while the
  rendered turn has its reasoning stripped (`content.split('</think>')[-1]`). What the model writes after the
  prompt is the reasoning, `\\n</think>\\n\\n`, the answer (the format these models generate) and the end of turn
  the template writes after the answer. A turn without reasoning gets an empty block.

Reasoning (`data.train_reasoning: false`): the reasoning text stays in the context but carries no loss; the
trained span starts right after it (the closing tag, the answer and the end of turn are trained).
"""

from __future__ import annotations

from collections.abc import Callable

from tunekit.errors import UserError

Render = Callable[..., str]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(m: dict) -> tuple[str, str]:
    """(reasoning, answer) of an assistant turn: `reasoning_content`, else an inline `<think>...</think>` block."""
    content = m.get("content") or ""
    if m.get("reasoning_content"):
        return m["reasoning_content"], content
    if THINK_CLOSE in content:
        head, _, answer = content.partition(THINK_CLOSE)
        return head.split(THINK_OPEN, 1)[-1], answer
    return "", content


def untrained_reasoning(turn_text: str, m: dict, where: str) -> int:
    """Characters at the start of a turn's trained text that belong to its reasoning (0 when it has none)."""
    reasoning = split_reasoning(m)[0].strip()
    if not reasoning:
        return 0
    at = turn_text.find(reasoning)
    if at < 0:
        raise UserError(f"{where}: data.train_reasoning is false but the turn's reasoning is not in its rendered text, "
                        "so it cannot be left out of the loss (the template drops it)")
    return at + len(reasoning)


def _system_in_last_user(messages: list[dict], i: int) -> list[dict] | None:
    """messages[:i+1] with the system text put into the last user turn before i (None when nothing to move)."""
    if not messages or messages[0]["role"] != "system":
        return None
    last_user = max((k for k in range(i) if messages[k]["role"] == "user"), default=None)
    if last_user is None:
        return None
    out = [dict(m) for m in messages[1 : i + 1]]
    k = last_user - 1
    out[k]["content"] = f"{messages[0]['content']}\n\n{out[k]['content']}"
    return out


def _reasoning_continuation(before: str, upto: str, m: dict) -> str | None:
    """The turn as an R1-style model writes it after a generation prompt that opens `<think>` (None otherwise)."""
    k = before.rfind(THINK_OPEN)
    if k < 0 or before[k:].strip() != THINK_OPEN or not upto.startswith(before[:k]):
        return None
    rendered = upto[k:]
    reasoning, answer = split_reasoning(m)
    answer = answer.strip()
    at = rendered.rfind(answer) if answer else 0  # a tool-call turn: the calls follow the reasoning
    if at < 0:
        return None
    return f"{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{rendered[at:]}"


def turn_example(render: Render, messages: list[dict], i: int, tools: list | None) -> tuple[str, int] | None:
    """(text, start of the trained text) for assistant turn i rendered as the conversation ending there, or None
    when the template renders it inconsistently with its own generation prompt in a way not handled here."""
    before = render(messages[:i], add_generation_prompt=True, tools=tools) if i else ""
    upto = render(messages[: i + 1], tools=tools)
    if upto.startswith(before):
        return upto, len(before)
    moved = _system_in_last_user(messages, i)
    if moved is not None and render(moved[:-1], add_generation_prompt=True, tools=tools) == before:
        upto = render(moved, tools=tools)
        if upto.startswith(before):
            return upto, len(before)
    rest = _reasoning_continuation(before, upto, messages[i])
    if rest is not None:
        return before + rest, len(before)
    return None
