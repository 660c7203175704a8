"""Preference rows as the model reads and writes them: the prompt rendered with the template's generation prompt,
and each answer as the model writes it after that prompt (what SFT trains; `turns.turn_example`).

TRL's preference trainers take the answer as whatever follows the common prefix of the prompt's rendering and the
prompt + answer's rendering. That equals the rule here for templates that render a conversation's prefixes
consistently (chatml, Llama 3, Qwen2.5, ...), and differs where the generation prompt is not how the template
renders an answered turn: DeepSeek-R1's prompt opens a `<think>` block the rendered turn lacks, Gemma 4's ends
with an empty thought channel, Kimi-K2-Thinking renders the last answer with an empty think block, GLM-4.5's turn
ends with nothing (the model stops by writing the next turn's header). There TRL's pairs are scored after a
context the model never sees at inference (or without a stop). So tunekit renders and tokenizes the pairs itself
and hands TRL token ids (DPO, KTO) or the exact texts (ORPO, CPO, which tokenize text rows).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tunekit.data.masking import inconsistent, only_whitespace_differs
from tunekit.data.templates import TemplateFailure, tokenizer_renderer
from tunekit.data.turns import split_reasoning, stop_header, turn_example
from tunekit.errors import UserError


def row_tools(row: dict) -> list[dict] | None:
    """A preference / RL row's tool schemas (kept as JSON text in the row, as TRL keeps them), or None."""
    return json.loads(row["tools"]) if row.get("tools") else None


def pair_texts(render: Any, prompt: list[dict], answer: list[dict], where: str,
               tools: list[dict] | None = None, before: str | None = None) -> tuple[str, str]:
    """(the prompt with the generation prompt, the answer as the model writes it after it), with the row's tool
    schemas given to the template. A one-turn answer is written as at inference (`turn_example`). An answer of
    several messages (tool calls, their results, further turns) ending with an assistant turn is SFT's example of
    that last turn after the prompt: the messages before it as the template renders them when the model writes it
    (gpt-oss and Kimi-K2-Thinking keep the tool calls' reasoning there, and drop it from a conversation that ends
    with the answer), then the turn as written. Otherwise (or where that example does not start with the prompt)
    it is the rendered conversation after the prompt when the rendering starts with the prompt, else its first
    turn as written followed by the rest as rendered. A header-delimited template's stop header ends it.
    `before`: the prompt rendered so, when the caller has it."""
    msgs, i = [*prompt, *answer], len(prompt)
    if before is None:
        before = render(prompt, add_generation_prompt=True, tools=tools)
    full = render(msgs, tools=tools) if len(answer) > 1 else ""
    last = _last_turn_written(render, msgs, before, tools) if len(answer) > 1 else None
    if last is not None:
        written = last
    elif full.startswith(before) and full:
        written = full[len(before):]
    else:
        written = _first_turn(render, msgs, i, before, where, tools)
        if len(answer) > 1:
            upto = render(msgs[: i + 1], tools=tools)
            if not full.startswith(upto):
                raise UserError(f"{where}: {getattr(render, 'template_name', 'the chat template')} renders this "
                                f"{len(answer)}-message answer neither after its generation prompt nor after its "
                                "own first turn, so the completion has no single text. Give one-turn answers.")
            written += full[len(upto):]
    if msgs[-1]["role"] == "assistant":
        written += stop_header(render, msgs, len(msgs) - 1, None)
    return before, written


def _last_turn_written(render: Any, msgs: list[dict], before: str, tools: list[dict] | None) -> str | None:
    """What follows the prompt `before` in the example of the conversation's last turn, an assistant turn (None
    when it ends otherwise, or that example does not start with the prompt)."""
    if msgs[-1]["role"] != "assistant":
        return None
    example = turn_example(render, msgs, len(msgs) - 1, tools)
    return example[0][len(before):] if example is not None and example[0].startswith(before) else None


def _first_turn(render: Any, msgs: list[dict], i: int, before: str, where: str, tools: list[dict] | None) -> str:
    example = turn_example(render, msgs, i, tools, before)
    if example is None and only_whitespace_differs(render, msgs, i, tools):
        raise inconsistent(where, per_turn=True, whitespace=True)
    if example is None or example[1] != len(before):
        hint = (" The answer has reasoning: if the template's generation prompt closes an empty think block (a "
                "thinking switch that is off, e.g. Qwen3's enable_thinking), turn it on with "
                "data.chat_template_kwargs, or leave the reasoning out." if split_reasoning(msgs[i])[0] else "")
        raise UserError(f"{where}: {getattr(render, 'template_name', 'the chat template')} renders the answer in a "
                        "way that does not follow its own generation prompt, so what the model writes after the "
                        f"prompt is not known. Use the model family's own template (data.chat_template).{hint}")
    text, start = example
    return text[start:]


def pair_ids(tokenizer: Any, prompt: str, completion: str,
             prompt_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the completion after it, from one tokenization of the whole text (as the
    model reads it); where a token straddles the boundary the prompt ends before it, as TRL's rule does.
    `prompt_ids`: the prompt's own tokenization, when the caller has it (one prompt, several answers)."""
    ids = prompt_ids if prompt_ids is not None else tokenizer(prompt, add_special_tokens=False).input_ids
    full = tokenizer(prompt + completion, add_special_tokens=False).input_ids
    n = 0
    while n < min(len(ids), len(full)) and ids[n] == full[n]:
        n += 1
    return full[:n], full[n:]


def pair_columns(kind: str) -> list[str]:  # what each trainer reads (the row's tools are rendered in the prompt)
    return {"dpo": ["prompt_ids", "chosen_ids", "rejected_ids"], "kto": ["prompt_ids", "completion_ids", "label"],
            "orpo": ["prompt", "chosen", "rejected"], "cpo": ["prompt", "chosen", "rejected"]}[kind]


def exact_pairs(ds: Any, tokenizer: Any, kind: str, process: int = 0) -> Any:
    """`ds`'s conversational rows ({prompt, chosen, rejected} or {prompt, completion, label}) as what `kind`'s TRL
    trainer reads after its own tokenization (dpo, kto: token ids) or chat templating (orpo, cpo: texts).
    `process`: this process's rank; each writes its own result file beside the dataset (no two write one file)."""
    if ds is None:
        return None
    render = tokenizer_renderer(tokenizer)
    answers = [k for k in ("chosen", "rejected", "completion") if k in ds.column_names]

    def convert(row: dict) -> dict:
        try:
            tools = row_tools(row)
            before = render(row["prompt"], add_generation_prompt=True, tools=tools)  # one prompt for every answer
            texts = {k: pair_texts(render, row["prompt"], row[k], "preference row", tools, before) for k in answers}
        except TemplateFailure as e:
            raise UserError(f"preference row: {e}") from None
        prompt = texts[answers[0]][0]
        if kind in ("orpo", "cpo"):
            return {"prompt": prompt, **{k: texts[k][1] for k in answers}}
        alone = tokenizer(prompt, add_special_tokens=False).input_ids  # one prompt for every answer
        ids = {k: pair_ids(tokenizer, *texts[k], alone) for k in answers}
        n = min(len(p) for p, _ in ids.values())  # one prompt for both answers: the shorter (a merged last token)
        return {"prompt_ids": ids[answers[0]][0][:n], **{f"{k}_ids": p[n:] + c for k, (p, c) in ids.items()}}

    keep = [c for c in pair_columns(kind) if c in ds.column_names]
    # rendered afresh each run (not loaded from datasets' cache: the result depends on the template, the tokenizer
    # and this code); the fingerprint names the result file, one per process
    fingerprint = hashlib.sha256(f"{ds._fingerprint}|{kind}|{render.template}|{process}".encode()).hexdigest()
    return ds.map(convert, remove_columns=[c for c in ds.column_names if c not in keep], load_from_cache_file=False,
                  new_fingerprint=fingerprint[:32], desc=f"Rendering {kind.upper()} pairs with the chat template")


def at_max_length(row: dict, max_length: int) -> tuple[bool, int]:
    """What TRL's DPO / KTO trainers do to a tokenized row at `max_length` (truncation keep_start): whether its
    prompt leaves room for an answer token (else the row is dropped), and how many of its answers the collator cuts
    there (their end and end-of-turn token are then not scored)."""
    n = len(row["prompt_ids"])
    if n >= max_length:
        return False, 0
    return True, sum(n + len(row[k]) > max_length for k in ("chosen_ids", "rejected_ids", "completion_ids") if k in row)
