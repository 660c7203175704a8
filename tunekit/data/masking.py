"""Render a conversation with the chat template and compute the loss mask from the rendering itself.

For each assistant turn i, the trained text is what rendering messages[:i+1] adds after rendering
messages[:i] with the generation prompt. That is exact for any template that renders prefixes
consistently (checked: an inconsistent template is an error, never a silently wrong mask), needs no
generation markers or marker strings, and includes the end-of-turn text the template writes after the
answer (a template that writes none is an error: the model would never learn to stop). Character spans
are mapped to tokens through the tokenizer's offsets; a token straddling a span start counts as prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunekit.errors import UserError

Render = Callable[..., str]


def assistant_spans(render: Render, messages: list[dict], train_on: str, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss."""
    full = render(messages)
    if train_on == "all":
        return full, [(0, len(full))]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last_assistant":
        turns = turns[-1:]
    spans = []
    for i in turns:
        before = render(messages[:i], add_generation_prompt=True) if i else ""
        upto = render(messages[: i + 1])
        if not upto.startswith(before) or not full.startswith(upto):
            raise UserError(
                f"{where}: the chat template does not render conversation prefixes consistently, so the "
                "assistant tokens cannot be located safely. Use another template (data.chat_template) "
                "or data.train_on: all."
            )
        trained, content = full[len(before) : len(upto)], messages[i]["content"].strip()
        end = trained.rfind(content)
        if content and end >= 0 and not trained[end + len(content) :].strip():
            raise UserError(
                f"{where}: the chat template writes nothing after an assistant turn (no EOS / end-of-turn), so the "
                "model would never learn to stop. Choose a template that ends assistant turns with an end-of-turn "
                "token (data.chat_template: chatml, llama3, ...)."
            )
        spans.append((len(before), len(upto)))
    return full, spans


def mask_from_offsets(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose first character lies inside a span (spans sorted, non-overlapping)."""
    mask, k = [], 0
    for a, b in offsets:
        while k < len(spans) and a >= spans[k][1]:
            k += 1
        mask.append(int(k < len(spans) and spans[k][0] <= a < spans[k][1] and b > a))
    return mask


def tokenize_texts(tokenizer: Any, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[dict]:
    """Batch-tokenize rendered texts and map their trained spans to a per-token mask."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [{"input_ids": ids, "mask": mask_from_offsets(offs, sp)}
            for ids, offs, sp in zip(enc["input_ids"], enc["offset_mapping"], spans)]


def tokenize_plain(tokenizer: Any, texts: list[str]) -> list[dict]:
    """Raw text (continued pre-training): every token trained, EOS appended so documents end."""
    if tokenizer.eos_token_id is None:
        raise UserError("model: the tokenizer has no EOS token, so text documents cannot be terminated")
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [{"input_ids": [*x, tokenizer.eos_token_id], "mask": [1] * (len(x) + 1)} for x in ids]


def tokenize_with_mask(tokenizer: Any, messages: list[dict], train_on: str, where: str) -> dict:
    """One conversation with the tokenizer's current template (used by tests and `--show`)."""
    from tunekit.data.templates import renderer

    text, spans = assistant_spans(renderer(tokenizer, tokenizer.chat_template), messages, train_on, where)
    return tokenize_texts(tokenizer, [text], [spans])[0]
