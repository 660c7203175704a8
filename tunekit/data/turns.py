"""One assistant turn as the model produces it at inference: the rendered context and the turn's trained text.

The rule stays "the trained text of turn i is what rendering messages[:i+1] adds to rendering messages[:i] with
the generation prompt". Several families' real templates break the rule for reasons the template itself makes clear,
and are handled here, each checked so it never applies by accident:

- **The system message moves** (Mistral v0.3: it is rendered inside the *last* user turn, and dropped from a
  conversation ending with an assistant turn). The context is the template's own generation-prompt rendering
  (system inside the last user turn); the turn is rendered with the system text already in that user turn, and
  accepted only when that rendering starts with the very same context.
- **The generation prompt opens the reasoning block** (DeepSeek-R1 and -V3: `<｜Assistant｜><think>\\n`) while the
  rendered turn has its reasoning stripped (`content.split('</think>')[-1]`). What the model writes after the
  prompt is the reasoning, the template's separator (the closing tag it writes before the answer when the turn
  has one, `</think>` for DeepSeek-V3.1; else `\\n</think>\\n` for Nemotron 3, read from a probe turn that
  keeps its reasoning; `\\n</think>\\n\\n`, the format DeepSeek's models generate, when the template strips
  reasoning from every turn), the answer or the tool calls (without an empty think block the template wrote
  before them) and the end of turn the template writes after them. A turn without reasoning gets an empty block.
- **The answer's reasoning is replaced by an empty think block** (Kimi-K2-Thinking renders the answer a
  conversation ends with as `<think></think>answer`): the turn is trained alone, as the model writes it, with
  its reasoning inside that block (`fill_reasoning`); the single-example path defers to it.
- **Earlier turns' reasoning is dropped once an answer ends the conversation** (Kimi-K2-Thinking keeps the reasoning
  of the tool-call turns of the step under way, so the model writes the final answer after them, but renders a
  conversation ending with that answer with every think block emptied): the trained text is the rendered turn
  after the generation prompt, reasoning filled in, written after the prompt that keeps the earlier reasoning
  (`_earlier_reasoning_dropped`; only when the two renderings differ in nothing but think blocks' contents).
- **Earlier turns' reasoning is left out once an answer ends the conversation** (gpt-oss keeps the analysis channel
  of the tool-call turns of the step under way in the prompt, and renders a conversation ending with the final
  answer without it): the trained text is what the template renders after the generation prompt of the same
  conversation with the earlier reasoning removed, written after the prompt that keeps it
  (`_earlier_reasoning_left_out`; only when the rendering through the turn is exactly that of the conversation
  without the earlier reasoning). Text beside a tool call counts as reasoning only for a template that renders it
  exactly as it renders the turn's reasoning (gpt-oss writes both to the analysis channel).
- **The generation prompt ends with a block the rendered turn does not have** (Gemma 4 with thinking off:
  `<|turn>model\\n<|channel>thought\\n<channel|>`, an empty thought channel, while a turn renders as
  `<|turn>model\\nanswer<turn|>`): the trained text is the rendered turn after the header both share, written after
  the whole prompt (`_after_prompt_block`; never when the block's text is part of the turn, never splitting a
  special token or the turn's own text: the header ends where two probe answers part, so `<|tool_call>` keeps the
  `<|` it shares with the block's `<|channel>` even where neither is a special token).
- **The next turn's header is the end of turn** (GLM-4.5/4.6: `<|user|>`, `<|assistant|>`, `<|observation|>` open
  turns and nothing closes them; the model stops by writing the next header, which its generation config lists
  as an EOS). For such a template (a user turn runs straight into the generation prompt, an assistant turn's
  text ends the rendering), the special token that opens the turn after each trained assistant turn (the next
  message's, or for the last turn a user turn's, a tool turn's after tool calls) is trained as its end of turn,
  as TRL's training variant of GLM's template does.

Reasoning (`data.train_reasoning: false`): the reasoning text stays in the context but carries no loss; the
trained span starts right after it (the closing tag, the answer and the end of turn are trained).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from tunekit.errors import UserError

Render = Callable[..., str]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PROBE = "tunekit probe"  # the text of made-up turns that probe what a template writes


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


EMPTY_THINK = re.compile(rf"{THINK_OPEN}(\s*){THINK_CLOSE}")


def fill_reasoning(turn: str, m: dict) -> str | None:
    """The rendered turn with its reasoning put into the one empty think block the template wrote in its place
    (Kimi-K2-Thinking renders the latest answer as `<think></think>answer`; what the model writes is the
    reasoning inside the block); None when the turn has no reasoning, renders it, or has no single empty block.
    Whitespace inside the empty block is kept around the reasoning (`<think>\\n\\n</think>` -> `<think>\\nR\\n</think>`)."""
    reasoning = split_reasoning(m)[0].strip()
    blocks = list(EMPTY_THINK.finditer(turn)) if reasoning and reasoning not in turn else []
    if len(blocks) != 1:
        return None
    b = blocks[0]
    inner = b.group(1)
    half = len(inner) // 2
    return f"{turn[:b.start()]}{THINK_OPEN}{inner[:half]}{reasoning}{inner[half:]}{THINK_CLOSE}{turn[b.end():]}"


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


def _reasoning_continuation(render: Render, before: str, upto: str, m: dict) -> str | None:
    """The turn as an R1-style model writes it after a generation prompt that opens `<think>` (None otherwise)."""
    k = before.rfind(THINK_OPEN)
    if k < 0 or before[k:].strip() != THINK_OPEN or not upto.startswith(before[:k]):
        return None
    rendered = upto[k:]
    reasoning, answer = split_reasoning(m)
    answer = answer.strip()
    sep = None
    if answer:
        at = rendered.rfind(answer)
        if at < 0:
            return None
        rest = rendered[at:]
        if rendered[:at].strip() == THINK_CLOSE:  # the template's own closing before the answer (DeepSeek-V3.1)
            sep = rendered[:at]
    else:  # a tool-call turn: the calls follow the reasoning, after any (empty) think block the template wrote
        close = rendered.find(THINK_CLOSE)
        rest = rendered[close + len(THINK_CLOSE):].lstrip("\n") if close >= 0 else rendered
    return f"{reasoning.strip(chr(10))}{sep or _reasoning_separator(render)}{rest}"


def _memo(render: Render, name: str, compute: Callable[[], str | bool]) -> str | bool:
    """compute() once per renderer, kept as an attribute of it (the probes below render small conversations)."""
    known = getattr(render, name, None)
    if known is None:
        known = compute()
        try:
            setattr(render, name, known)
        except AttributeError:  # not a function object
            pass
    return known


def _probe(render: Render, messages: list[dict], **kw: object) -> str:
    """A probe rendering; "" when the template refuses it (then nothing is learned from it)."""
    try:
        return render(messages, **kw)
    except Exception:  # noqa: BLE001  (any refusal of a made-up conversation)
        return ""


def _reasoning_separator(render: Render) -> str:
    """What the template writes between a turn's reasoning and its answer (`\\n</think>\\n` for Nemotron 3),
    read from a probe conversation whose last turn keeps its reasoning; DeepSeek's `\\n</think>\\n\\n` when the
    template strips reasoning from every turn."""

    def compute() -> str:
        reasoning, answer = "tunekit reasoning", "tunekit answer"
        text = _probe(render, [{"role": "user", "content": PROBE},
                               {"role": "assistant", "reasoning_content": reasoning, "content": answer}])
        a, b = text.find(reasoning), text.rfind(answer)
        sep = text[a + len(reasoning): b] if 0 <= a < b else ""
        return sep if sep.strip() == THINK_CLOSE else f"\n{THINK_CLOSE}\n\n"

    return _memo(render, "reasoning_separator", compute)  # type: ignore[return-value]


def turn_example(render: Render, messages: list[dict], i: int, tools: list | None,
                 before: str | None = None) -> tuple[str, int] | None:
    """(text, start of the trained text) for assistant turn i rendered as the conversation ending there, or None
    when the template renders it inconsistently with its own generation prompt in a way not handled here.
    `before`: messages[:i] rendered with the generation prompt, when the caller has it (needed for i = 0)."""
    if before is None:
        if not i:  # a conversation opening with the assistant: the caller finds its context (`opening.py`)
            return None
        before = render(messages[:i], add_generation_prompt=True, tools=tools)
    upto = render(messages[: i + 1], tools=tools)
    if upto.startswith(before):
        filled = fill_reasoning(upto[len(before):], messages[i])
        return (upto if filled is None else before + filled), len(before)
    moved = _system_in_last_user(messages, i)
    if moved is not None and render(moved[:-1], add_generation_prompt=True, tools=tools) == before:
        upto = render(moved, tools=tools)
        if upto.startswith(before):
            return upto, len(before)
    rest = _reasoning_continuation(render, before, upto, messages[i])
    if rest is None:
        history = render(messages[:i], tools=tools) if i else ""
        rest = (_after_prompt_block(history, before, upto, getattr(render, "special_tokens", None) or [],
                                    lambda: _opening_length(render, messages[:i], tools, history))
                or _earlier_reasoning_dropped(history, before, upto, messages[i])
                or _earlier_reasoning_left_out(render, messages, i, tools, before, upto))
    if rest is not None:
        return before + rest, len(before)
    return None


ANY_THINK = re.compile(rf"{THINK_OPEN}.*?{THINK_CLOSE}", re.DOTALL)


def _hollow(text: str) -> str:
    return ANY_THINK.sub(THINK_OPEN + THINK_CLOSE, text)


def _earlier_reasoning_dropped(history: str, before: str, upto: str, m: dict) -> str | None:
    """The turn as the model writes it after a prompt that still holds earlier turns' reasoning, which the template
    drops once an answer ends the conversation (Kimi-K2-Thinking keeps the reasoning of the turns since the last
    answer without tool calls, the agentic step under way, so the final answer of a tool-calling trace is written
    after the calls' reasoning): the rendered turn after the generation prompt, its reasoning filled into the empty
    block. None unless the rendering through the turn is exactly the context with think blocks emptied, then the
    generation prompt and the turn."""
    prompt = before[len(history):] if history and before.startswith(history) else ""
    at = upto.rfind(prompt) if prompt else -1
    if at < 0 or upto[:at] == history or _hollow(upto[:at]) != _hollow(history):
        return None
    turn = upto[at + len(prompt):]
    return fill_reasoning(turn, m) or turn


def text_is_reasoning(render: Render, messages: list[dict], k: int, tools: list | None) -> bool:
    """The template renders the text of tool-call turn k exactly as it renders the same text given as the turn's
    reasoning (gpt-oss: the text beside a call is written to the analysis channel, as `thinking` is)."""
    m = messages[k]
    text = (m.get("content") or "").strip()
    if not m.get("tool_calls") or not text or split_reasoning(m)[0]:
        return False
    as_reasoning = {**m, "content": "", "reasoning_content": m["content"]}
    rendered = _probe(render, messages[: k + 1], tools=tools)
    return text in rendered and rendered == _probe(render, [*messages[:k], as_reasoning], tools=tools)


def _without_reasoning(render: Render, messages: list[dict], k: int, tools: list | None) -> dict:
    """Assistant turn k without its reasoning (and without the text beside its calls where that text is the
    reasoning to this template)."""
    m = messages[k]
    reasoning, answer = split_reasoning(m)
    if reasoning:
        return {**{key: v for key, v in m.items() if key != "reasoning_content"}, "content": answer}
    return {**m, "content": ""} if text_is_reasoning(render, messages, k, tools) else m


def _earlier_reasoning_left_out(render: Render, messages: list[dict], i: int, tools: list | None, before: str,
                                upto: str) -> str | None:
    """The turn as the model writes it after a prompt that still holds earlier turns' reasoning, which the template
    leaves out altogether once an answer ends the conversation (gpt-oss keeps the analysis of the tool-call turns
    while the step is under way, so the model writes the final answer after it, and renders a conversation that
    ends with the answer without that analysis): the rendered turn after the generation prompt of the same
    conversation with the earlier reasoning removed. None unless the rendering through the turn is exactly that of
    the conversation without the earlier reasoning, and starts with its generation prompt."""
    bare = [_without_reasoning(render, messages, k, tools) if m["role"] == "assistant" else m
            for k, m in enumerate(messages[:i])]
    if bare == messages[:i] or render([*bare, messages[i]], tools=tools) != upto:
        return None
    prompt = render(bare, add_generation_prompt=True, tools=tools)
    if prompt == before or not upto.startswith(prompt):
        return None
    return upto[len(prompt):]


def _starts(text: str, token: str) -> list[int]:
    return [m.start() for m in re.finditer(re.escape(token), text)]


def _after_prompt_block(history: str, before: str, upto: str, specials: list[str],
                        opening: Callable[[], int | None] = lambda: None) -> str | None:
    """The turn as the model writes it after a generation prompt that ends with a block the rendered turn does
    not have (Gemma 4: `<|turn>model\\n<|channel>thought\\n<channel|>`, an empty thought channel, where the turn
    renders as `<|turn>model\\nanswer<turn|>`): the rendered turn after the header both share. None unless the two
    differ only inside the generation prompt and the prompt's extra block is not part of the turn's text.
    The shared header ends where the turn's own text starts (`opening`: what the template writes before any
    answer), never inside a special token: the block `<|channel>` and a call's `<|tool_call>` share `<|`, which
    belongs to the call (with a tokenizer where neither is a special token, it was lost from the example)."""
    if not (history and before.startswith(history) and upto.startswith(history)):
        return None
    prompt, turn = before[len(history):], upto[len(history):]
    k = len(os.path.commonprefix([prompt, turn]))
    # never split a special token, nor the turn's own text (the header both share ends where that begins)
    k = min((p for t in specials if t for p in _starts(prompt, t) if p < k < p + len(t)), default=k)
    header = opening() if k else None
    cuts = {k, min(k, header) if header is not None else k}
    # the block must not be part of the turn, cut either way (`</think>` closing an empty block the turn fills)
    if not k or any(not prompt[c:].strip() or prompt[c:].strip() in turn[c:] for c in cuts):
        return None
    return turn[min(cuts):]


def _opening_length(render: Render, context: list[dict], tools: list | None, history: str) -> int | None:
    """How much the template writes after `history` (`context` rendered) before an assistant turn's text: the
    common prefix of the turn rendered with two probe answers that start differently; None when unknown."""
    texts = [_probe(render, [*context, {"role": "assistant", "content": c}], tools=tools)
             for c in (PROBE, PROBE.upper()[::-1])]
    if not all(t.startswith(history) for t in texts):
        return None
    return len(os.path.commonprefix(texts)) - len(history)


def _header_delimited(render: Render) -> bool:
    """Turns are opened by headers and closed by nothing: a user turn runs straight into the (non-empty) generation
    prompt, and an assistant turn's text is the end of the rendering."""

    def compute() -> bool:
        user = [{"role": "user", "content": PROBE}]
        plain, prompt = _probe(render, user), _probe(render, user, add_generation_prompt=True)
        answered = _probe(render, [*user, {"role": "assistant", "content": "tunekit answer"}])
        return (plain.rstrip().endswith(PROBE) and prompt.startswith(plain) and len(prompt) > len(plain)
                and answered.endswith("tunekit answer"))

    return bool(_memo(render, "header_delimited", compute))


def _leading_special(text: str, specials: list[str]) -> str:
    return next((t for t in specials if t and text.startswith(t)), "")


def _opening(render: Render, role: str) -> str:
    """The text a header-delimited template writes to open a `role` turn after an assistant turn."""

    def compute() -> str:
        base = [{"role": "user", "content": PROBE}, {"role": "assistant", "content": "tunekit answer"}]
        nxt = {"role": role, "content": PROBE, **({"name": "probe", "tool_call_id": "probe"} if role == "tool" else {})}
        head, whole = _probe(render, base), _probe(render, [*base, nxt])
        return whole[len(head):] if head and whole.startswith(head) else ""

    return _memo(render, f"opening_{role}", compute)  # type: ignore[return-value]


def stop_header(render: Render, messages: list[dict], i: int, following: str | None) -> str:
    """For a header-delimited template, the special token that opens the turn after assistant turn i (what the
    model writes to stop); "" otherwise. `following`: the rendered rest of the conversation after the turn when
    known; else the opening of the next message's role (the last turn: a tool turn after tool calls, else a user
    turn), from a probe conversation, since re-rendering this one may rewrite its earlier turns."""
    specials = getattr(render, "special_tokens", None)
    if not specials or not _header_delimited(render):
        return ""
    if following is None:
        role = messages[i + 1]["role"] if i + 1 < len(messages) else (
            "tool" if messages[i].get("tool_calls") else "user")
        following = _opening(render, role)
    return _leading_special(following, specials)
