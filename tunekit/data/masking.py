"""Render a conversation with the chat template and compute the loss mask from the rendering itself.

For each assistant turn i, the trained text is what rendering messages[:i+1] adds after rendering
messages[:i] with the generation prompt. That is exact for any template that renders prefixes
consistently (checked: an inconsistent template is an error, never a silently wrong mask), needs no
generation markers or marker strings, and includes the end-of-turn text the template writes after the
answer (a template that writes none is an error: the model would never learn to stop). Character spans
are mapped to tokens through the tokenizer's offsets: a token is trained when any of its characters lies in a
span, so a token that a BPE merge makes straddle the boundary between context and trained text is trained (as in
the preference pairs, `pair_tokens.pair_ids`): every character of the trained text is in a trained token.

A conversation that opens with an assistant turn (ShareGPT's `gpt` greeting) has as context what the template
writes before it (`opening.py`: its preamble and generation prompt), never "" (that trained Qwen2.5's
default system block and the header as the answer); where no such context is found it is an error.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from typing import Any

from tunekit.data.messages import Conversation
from tunekit.data.opening import check_not_empty, context
from tunekit.data.templates import TemplateFailure, renderer, shown, tools_ignored
from tunekit.data.turns import (
    THINK_CLOSE,
    fill_reasoning,
    split_reasoning,
    stop_header,
    text_is_reasoning,
    turn_example,
    untrained_reasoning,
)
from tunekit.errors import UserError

Render = Callable[..., str]


def trained_turns(messages: list[dict], train_on: str, where: str) -> list[int]:
    """Indices of the assistant turns that carry loss: `train_on`, overridden per message by a `train` flag."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    flagged = [i for i in turns if messages[i].get("train") is not None]
    if train_on == "all":
        if any(not messages[i]["train"] for i in flagged):
            raise UserError(f"{where}: a message is marked `train: false` (or is an assistant turn of a "
                            "prompt_completion row's prompt, which is context) but data.train_on is `all` (every "
                            "token trained); use data.train_on: assistant to honour per-message flags")
        return turns
    default = turns[-1:] if train_on == "last_assistant" else turns
    return [i for i in turns if messages[i].get("train", i in default)]


def _label(render: Render) -> str:
    return getattr(render, "template_name", "the chat template")


def answer_lost(render: Render, m: dict, text: str, where: str, trained: bool = True) -> UserError | None:
    """The error for assistant turn `m` when its text (the answer, or the text beside its tool calls) is not in
    `text` (what is trained of it, or the rendered conversation it is context in); None when it is there."""
    answer = split_reasoning(m)[1].strip()
    if shown(answer, text):
        return None
    if m.get("tool_calls"):
        names = ", ".join(dict.fromkeys(f"`{c['function']['name']}`" for c in m["tool_calls"]))
        return UserError(
            f"{where}: the assistant turn that calls {names} also has the text `{answer[:60]}`, and {_label(render)} "
            "has no place for text beside tool calls (it renders the calls only), so the text would be silently "
            "lost. Remove the text, or put it in its own assistant turn before the call (where the template accepts "
            "two assistant turns in a row); choose a template that renders it (data.chat_template: qwen2.5, qwen3); "
            "or set `data.drop_text_beside_tool_calls: true` to leave such text out knowingly.")
    return UserError(
        f"{where}: {_label(render)} does not render the assistant turn's text (`{answer[:60]}` is not in "
        f"{'what would be trained' if trained else 'the rendered conversation'}), so the answer would be lost. "
        "Check the rendering with `tunekit preprocess RECIPE --show 2` and choose a template that renders "
        "`content` (data.chat_template).")


def check_answers(render: Render, messages: list[dict], text: str, where: str, tools: list | None,
                  skip: tuple[int, ...] = ()) -> None:
    """Every assistant turn of `messages` (but those in `skip`, checked where they are trained) has its text in the
    rendered `text`: a template dropping an answer, or the text beside tool calls, from the context is an error.
    Text that the template renders as the turn's reasoning (gpt-oss's analysis channel) may be dropped as earlier
    turns' reasoning is."""
    for k, m in enumerate(messages):
        error = answer_lost(render, m, text, where, False) if m["role"] == "assistant" and k not in skip else None
        if error and not text_is_reasoning(render, messages, k, tools):
            raise error


def calls_lost(render: Render, m: dict, text: str, where: str) -> UserError | None:
    """The error when `text` (what is trained of assistant turn `m`, or an answer) names a function fewer times than
    the turn calls it: a template rendering one call per turn (gpt-oss's) drops the others; None otherwise."""
    names = [c["function"]["name"] for c in m.get("tool_calls") or ()]
    if not any(n in text for n in names):  # no call rendered at all: `_check_turn` says which
        return None
    short = next((n for n in dict.fromkeys(names) if text.count(n) < names.count(n)), None)
    if short is None:
        return None
    return UserError(
        f"{where}: the assistant turn makes {len(names)} tool calls but {_label(render)} renders fewer (`{short}`: "
        f"{names.count(short)} called, {text.count(short)} rendered; the template renders one tool call per "
        "assistant turn), so the other calls would be silently lost. Give each call its own assistant turn followed "
        "by its tool result (one tool call per assistant turn), or choose a template that renders parallel calls "
        "(data.chat_template: qwen2.5).")


def _reasoning_lost(render: Render, messages: list[dict], i: int, where: str) -> UserError:
    if i and messages[i - 1]["role"] == "tool":  # DeepSeek-V3/R1 write no think block after tool outputs
        return UserError(
            f"{where}: {_label(render)} does not render the `reasoning_content` of an assistant turn that follows "
            "tool results (the template writes the answer only there), so the reasoning would not be trained. "
            "Remove the reasoning from answers that follow tool results (the model's own format has none there), "
            "or choose a template that renders reasoning after tool results (data.chat_template: qwen3).")
    return UserError(
        f"{where}: {_label(render)} does not render the assistant turn's `reasoning_content`, so the reasoning "
        "would not be trained. Choose a template that renders it (the model family's own, e.g. Qwen3's or "
        "DeepSeek-R1's) or put the reasoning inline in `content` (`<think>...</think>` before the answer).")


def _check_turn(render: Render, messages: list[dict], i: int, trained: str, where: str) -> None:
    """Assistant turn i must end with end-of-turn text, and its tool calls, reasoning and text (the answer, or the
    text beside its calls) must be in its trained text."""
    m = messages[i]
    if error := calls_lost(render, m, trained, where):
        raise error
    for call in m.get("tool_calls", ()):
        name = call["function"]["name"]
        if name not in trained and call.get("id") and str(call["id"]) in trained:
            raise UserError(
                f"{where}: {_label(render)} writes the tool call's `id` (`{call['id']}`) where the call is named, and "
                f"the id does not contain the function name `{name}`, so the model would learn calls that never say "
                f"which tool. This template expects ids that name the function (Kimi-K2: `functions.{name}:0`, the "
                "call's index after the colon): give the rows' tool calls such ids.")
        if name not in trained:
            raise UserError(
                f"{where}: {_label(render)} does not render tool calls (the assistant turn's call to `{name}` is "
                "missing from its rendered text), so the call would not be trained. Choose a template that renders "
                "`tool_calls` (data.chat_template: qwen2.5, or the model's own tool-capable template).")
    if error := answer_lost(render, m, trained, where):
        raise error
    if m.get("reasoning_content") and m["reasoning_content"].strip() not in trained:
        raise _reasoning_lost(render, messages, i, where)
    content = (m["content"] or "").strip()
    end = trained.rfind(content)
    if content and end >= 0 and not m.get("tool_calls") and not trained[end + len(content):].strip():
        raise UserError(
            f"{where}: the chat template writes nothing after an assistant turn (no EOS / end-of-turn), so the "
            "model would never learn to stop. Choose a template that ends assistant turns with an end-of-turn "
            "token (data.chat_template: chatml, llama3, ...)."
        )


def without_text_beside_calls(messages: list[dict]) -> list[dict]:
    """`data.drop_text_beside_tool_calls`: the assistant turns that make tool calls without their text (reasoning
    inline in it, `<think>...</think>`, stays); the row's tool schemas are kept."""
    def bare(m: dict) -> dict:
        content = m.get("content") or ""
        inline = not m.get("reasoning_content") and THINK_CLOSE in content
        return {**m, "content": content[: content.index(THINK_CLOSE) + len(THINK_CLOSE)] if inline else ""}

    out = [bare(m) if m["role"] == "assistant" and m.get("tool_calls") else m for m in messages]
    return Conversation.of(out, getattr(messages, "tools", None))


def _check_tools_rendered(render: Render, messages: list[dict], tools: list[dict], full: str, where: str) -> None:
    if render(messages, tools=None) == full:
        raise UserError(f"{where}: {tools_ignored(getattr(render, 'template_name', 'the chat template'))}")


class InconsistentPrefixes(UserError):
    pass


def only_whitespace_differs(render: Render, messages: list[dict], i: int, tools: list | None) -> bool:
    """The generation-prompt rendering before turn i and the rendering through it differ only in whitespace:
    the template writes its own indentation and line breaks (text outside its tags), not a rewrite of turns."""
    before = render(messages[:i], add_generation_prompt=True, tools=tools) if i else ""
    upto = render(messages[: i + 1], tools=tools)
    squeeze = re.compile(r"\s+")
    return not upto.startswith(before) and squeeze.sub("", upto).startswith(squeeze.sub("", before))


def inconsistent(where: str, per_turn: bool, whitespace: bool = False) -> InconsistentPrefixes:
    if whitespace:
        return InconsistentPrefixes(
            f"{where}: the chat template renders a conversation differently from its own generation prompt only in "
            "whitespace: it writes the indentation and line breaks between its tags into the text (a template "
            "laid out for reading, e.g. chujiezheng/chat_templates' files, which are meant to be loaded with that "
            "whitespace removed). Remove the whitespace between tags, or write `{%-`, `-%}`, `{{-`, `-}}` to trim "
            "it, and check the rendering with `tunekit preprocess RECIPE --show 2`.")
    fix = ("even for one assistant turn at a time (the turn does not start with the generation prompt); use "
           "another template (data.chat_template) or data.train_on: all" if per_turn else
           "and data.multi_turn is `consistent`. Set data.multi_turn: per_turn (one example per assistant turn, "
           "rendered as the template renders a conversation ending there) or auto, use another template "
           "(data.chat_template), or data.train_on: last_assistant / all")
    return InconsistentPrefixes(f"{where}: the chat template does not render conversation prefixes consistently "
                                f"(templates that rewrite earlier turns do this), so the assistant tokens cannot be "
                                f"located safely {fix}.")


def assistant_spans(render: Render, messages: list[dict], train_on: str, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss (tools: `messages.tools`, if any)."""
    return conversation_examples(render, messages, train_on, "consistent", where)[0]


def _trained_start(trained: str, m: dict, train_reasoning: bool, where: str) -> int:
    return 0 if train_reasoning else untrained_reasoning(trained, m, where)


def conversation_examples(render: Render, messages: list[dict], train_on: str, multi_turn: str, where: str,
                          train_reasoning: bool = True) -> list[tuple[str, list[tuple[int, int]]]]:
    """(text, trained character spans) examples for one conversation: the whole conversation with every trained
    turn masked in, when the template renders its prefixes consistently; otherwise (`multi_turn` auto or
    per_turn) one example per trained assistant turn, rendered as the conversation ending there."""
    tools = getattr(messages, "tools", None)
    msgs = list(messages)
    try:
        if multi_turn != "per_turn" or train_on == "all":
            try:
                return [_spans(render, msgs, tools, train_on, where, train_reasoning)]
            except InconsistentPrefixes:
                if multi_turn == "consistent":
                    raise
        return _per_turn(render, msgs, tools, train_on, where, train_reasoning)
    except TemplateFailure as e:
        raise UserError(f"{where}: {e}") from None


def _per_turn(render: Render, messages: list[dict], tools: list | None, train_on: str, where: str,
              train_reasoning: bool) -> list[tuple[str, list[tuple[int, int]]]]:
    if tools:
        _check_tools_rendered(render, messages, tools, render(messages, tools=tools), where)
    out = []
    turns = trained_turns(messages, train_on, where)
    check_not_empty(messages, turns, where)
    for i in turns:
        example = turn_example(render, messages, i, tools, context(render, messages, i, tools, where))
        if example is None:
            raise inconsistent(where, True, only_whitespace_differs(render, messages, i, tools))
        text, start = example
        text += stop_header(render, messages, i, None)
        _check_turn(render, messages, i, text[start:], where)
        check_answers(render, messages[:i], text[:start], where, tools)
        start += _trained_start(text[start:], messages[i], train_reasoning, where)
        out.append((text, [(start, len(text))]))
    return out


def _end_in(full: str, upto: str, eos: str | None) -> int | None:
    """Where the text `upto` ends inside `full`: its length when it is a prefix; a template writing EOS only at the
    end of a document (Phi-3) ends a shorter conversation with EOS, which `full` has only at its end."""
    if full.startswith(upto):
        return len(upto)
    if eos and upto.endswith(eos) and full.startswith(upto[: -len(eos)]):
        return len(upto) - len(eos)
    return None


def _spans(render: Render, messages: list[dict], tools: list | None, train_on: str, where: str,
           train_reasoning: bool = True) -> tuple[str, list[tuple[int, int]]]:
    full = render(messages, tools=tools)
    if tools:
        _check_tools_rendered(render, messages, tools, full, where)
    turns = trained_turns(messages, train_on, where)
    check_not_empty(messages, turns, where)
    if train_on == "all":
        check_answers(render, messages, full, where, tools)
        return full, [(0, len(full))]
    eos = getattr(render, "eos_token", None)
    spans = []
    for i in turns:
        before = context(render, messages, i, tools, where)
        upto = full if i == len(messages) - 1 else render(messages[: i + 1], tools=tools)
        end = _end_in(full, upto, eos)
        if end is None or not full.startswith(before) or end < len(before):
            raise inconsistent(where, False, only_whitespace_differs(render, messages, i, tools))
        if fill_reasoning(full[len(before) : end], messages[i]) is not None:  # each turn alone, reasoning filled in
            raise inconsistent(where, per_turn=False)
        stop = stop_header(render, messages, i, full[end:] if end < len(full) else None)
        if end == len(full):  # the last turn: the header the template would write next is appended
            full += stop
        end += len(stop)
        _check_turn(render, messages, i, full[len(before) : end], where)
        start = len(before) + _trained_start(full[len(before) : end], messages[i], train_reasoning, where)
        spans.append((start, end))
    check_answers(render, messages, full, where, tools, tuple(turns))
    return full, spans


def token_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans -> [first, last) token index ranges of the tokens holding a character inside.

    Offsets are in text order, so two binary searches per span replace a per-token loop.
    """
    ends = [b for _, b in offsets]
    return _disjoint([(bisect.bisect_right(ends, a) if a < b else bisect.bisect_left(offsets, (b, -1)),
                       bisect.bisect_left(offsets, (b, -1))) for a, b in spans])


def _disjoint(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token ranges in text order, each starting where the one before ends at the earliest (a token straddling a
    short context between two trained spans is counted once)."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        a = max(a, out[-1][1]) if out else a
        out.append((a, max(a, b)))
    return out


def _first_token_at_or_after(enc: Any, pos: int, text_len: int) -> int | None:
    """Index of the first token starting at or after character `pos`, asking the encoding for one token only."""
    if pos >= text_len:
        return len(enc)
    t = enc.char_to_token(pos)
    if t is None:
        return None
    return t if enc.token_to_chars(t)[0] >= pos else t + 1


def _token_holding(enc: Any, pos: int, text_len: int) -> int | None:
    """Index of the token holding character `pos` (a token that starts before it included: a merge across the
    boundary), or None when no token covers it."""
    return len(enc) if pos >= text_len else enc.char_to_token(pos)


def _fast_backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return backend
    return None


def tokenize_texts(tokenizer: Any, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[dict]:
    """Batch-tokenize rendered texts; `spans` become token ranges ([first, last) token indices) that carry loss."""
    backend = _fast_backend(tokenizer)
    if backend is None:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [{"input_ids": ids, "spans": token_spans(offs, sp)}
                for ids, offs, sp in zip(enc["input_ids"], enc["offset_mapping"], spans)]
    out = []
    # The fast tokenizer's own batch encoder (what `tokenizer(texts)` calls), reading only the offsets of the
    # tokens at span boundaries instead of converting every token's offsets to Python.
    for e, text, sp in zip(backend.encode_batch(texts, add_special_tokens=False), texts, spans):
        found = [(_token_holding(e, a, len(text)) if a < b else _first_token_at_or_after(e, b, len(text)),
                  _first_token_at_or_after(e, b, len(text))) for a, b in sp]
        ranges = [(a, b) for a, b in found if a is not None and b is not None]
        # a boundary inside text no token covers: every token's offsets
        out.append({"input_ids": e.ids, "spans": _disjoint(ranges) if len(ranges) == len(found)
                    else token_spans(e.offsets, sp)})
    return out


def tokenize_plain(tokenizer: Any, texts: list[str]) -> list[dict]:
    """Raw text (continued pre-training): every token trained, EOS appended so documents end."""
    if tokenizer.eos_token_id is None:
        raise UserError("model: the tokenizer has no EOS token, so text documents cannot be terminated")
    backend = _fast_backend(tokenizer)
    encoded = ([e.ids for e in backend.encode_batch(texts, add_special_tokens=False)] if backend is not None
               else tokenizer(texts, add_special_tokens=False)["input_ids"])
    out = []
    for ids in encoded:
        ids = [*ids, tokenizer.eos_token_id]
        out.append({"input_ids": ids, "spans": [(0, len(ids))]})
    return out


def span_mask(n: int, spans: list[tuple[int, int]]) -> list[int]:
    mask = [0] * n
    for a, b in spans:
        mask[a:b] = [1] * (b - a)
    return mask


def tokenize_with_mask(tokenizer: Any, messages: list[dict], train_on: str, where: str) -> dict:
    """One conversation with the tokenizer's current template (used by tests and `--show`)."""
    text, spans = assistant_spans(renderer(tokenizer, tokenizer.chat_template), messages, train_on, where)
    enc = tokenize_texts(tokenizer, [text], [spans])[0]
    return {"input_ids": enc["input_ids"], "mask": span_mask(len(enc["input_ids"]), enc["spans"])}
