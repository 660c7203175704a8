"""Render a conversation with the chat template and compute the loss mask from the rendering itself.

For each assistant turn i, the trained text is what rendering messages[:i+1] adds after rendering
messages[:i] with the generation prompt. That is exact for any template that renders prefixes
consistently (checked: an inconsistent template is an error, never a silently wrong mask), and it
includes the end-of-turn token the template writes after the answer. Character spans are mapped to
tokens through the tokenizer's offsets.
"""

from __future__ import annotations

from typing import Any

from tunekit.errors import UserError


def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not upto.startswith(before) or not full.startswith(upto):
            raise UserError(
                f"{where}: the chat template does not render conversation prefixes consistently, so the "
                "assistant tokens cannot be located safely. Use a different template (model.chat_template) "
                "or data.train_on: all."
            )
        spans.append((len(before), len(upto)))
    return full, spans


def tokenize_with_mask(tokenizer: Any, messages: list[dict], train_on: str, where: str) -> dict:
    text, spans = assistant_spans(tokenizer, messages, where)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if train_on == "all":
        mask = [1] * len(ids)
    else:
        # A token is trained when it starts inside an assistant span (a token straddling the span start
        # belongs to the prompt side, so prompt text is never trained).
        mask = [int(any(s <= a < e for s, e in spans) and a >= 0) for a, _ in offsets]
    return {"input_ids": ids, "mask": mask}
