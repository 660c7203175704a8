"""Dataset formats: turn one row into a list of chat messages ({role, content}), or raw text for `text`.

Each format reads the columns it expects (renamed by the dataset's `columns:` map) and reports a missing
column with what was expected and what was found, and a wrong type with the row it is in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import yaml

from tunekit.data.messages import (
    ROLES,
    Conversation,
    RowError,
    message,
    tool_calls,
    tools_schema,
    turn_text,
    with_train_flag,
)
from tunekit.data.sources import resolve_path
from tunekit.errors import UserError
from tunekit.paths import decode_utf8

__all__ = ["FORMATS", "ROLES", "RowError"]
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "tool": "tool", "function_call": "assistant", "observation": "tool"}


def _get(row: dict, key: str, spec: Any, where: str, optional: bool = False) -> object:
    col = spec.columns.get(key, key)
    if col not in row or (optional and row[col] is None):
        if optional:
            return None
        found = ", ".join(sorted(row)) or "nothing"
        raise RowError(f"{where}: missing column `{col}` (format `{spec.format}` expects `{key}`); found: {found}. "
                       + (_transcript_hint(row, key) or f"Map it with `columns: {{{key}: YOUR_COLUMN}}`."))
    return row[col]


TRANSCRIPT_MARKERS = ("USER:", "ASSISTANT:", "Human:", "Assistant:", "### Human", "<|im_start|>", "[INST]")


def _transcript_hint(row: dict, key: str) -> str | None:
    """A conversation expected as a list of turns but held as one transcript string (glaive-function-calling-v2's
    `chat`, openassistant-guanaco's `text`): mapping the column would not help, converting the rows does."""
    if key not in ("messages", "conversations"):
        return None
    for col, value in row.items():
        if isinstance(value, str) and sum(m in value for m in TRANSCRIPT_MARKERS) >= 2:
            return (f"`{col}` holds the conversation as one transcript string, which tunekit does not split into "
                    "turns (the markers differ by dataset): convert the rows to `messages` lists of {role, content} "
                    "first, or train it as plain text with `format: text` (every token trained).")
    return None


def _text(value: object, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{where}: `{field}` must be a string, found {type(value).__name__} ({str(value)[:40]!r})")
    return value


def with_row_system(msgs: list[dict], row: dict, spec: Any, where: str) -> list[dict]:
    """`msgs` with the row's `system` column, else the dataset's `system:`, in front when they have no system
    message. A `system` column that differs from the row's own system message is an error: one of them would be
    silently lost."""
    column = _get(row, "system", spec, where, optional=True)
    system = _text(column, "system", where) if column else spec.system
    if msgs and msgs[0]["role"] == "system":
        if column and system.strip() != (msgs[0]["content"] or "").strip():
            raise RowError(f"{where}: the row has a `system` column and a different system message "
                           f"({system.strip()[:40]!r} vs {(msgs[0]['content'] or '').strip()[:40]!r}); one would be "
                           "lost. Keep one of them (map the column away with `columns: {system: ...}`)")
        return msgs
    return [{"role": "system", "content": system}, *msgs] if system else msgs


def _check_trainable(msgs: list[dict], where: str) -> list[dict]:
    if not any(m["role"] == "assistant" for m in msgs):
        raise RowError(f"{where}: the conversation has no assistant turn, so nothing would be trained")
    return msgs


def alpaca_format(row: dict, spec: Any, where: str) -> list[dict]:
    instruction = _text(_get(row, "instruction", spec, where), "instruction", where)
    extra = _get(row, "input", spec, where, optional=True)
    output = _text(_get(row, "output", spec, where), "output", where)
    user = instruction + (f"\n\n{_text(extra, 'input', where)}" if extra else "")
    msgs = [*_history(_get(row, "history", spec, where, optional=True), where),
            {"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return _conversation(msgs, row, spec, where)  # a `tools` column too (LLaMA-Factory's alpaca has one)


def _history(value: object, where: str) -> list[dict]:
    """LLaMA-Factory's alpaca `history`: earlier [instruction, response] pairs, the turns before this one."""
    if value is None or value == []:
        return []
    if not isinstance(value, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        raise RowError(f"{where}: `history` must be a list of [instruction, response] pairs (LLaMA-Factory's alpaca "
                       f"format), found {str(value)[:60]!r}")
    return [{"role": role, "content": _text(text, f"history[{k}][{j}]", where)}
            for k, pair in enumerate(value) for j, (role, text) in enumerate(zip(("user", "assistant"), pair))]


def _row_tools(row: dict, spec: Any, where: str) -> list[dict] | None:
    """The row's `tools` column (tool schemas passed to the chat template), else its `functions` column (OpenAI's
    legacy fine-tuning rows, which go with `function_call` turns), else the dataset's `tools:` file."""
    own = tools_schema(_get(row, "tools", spec, where, optional=True), spec.columns.get("tools", "tools"), where)
    legacy = None if "tools" in spec.columns else tools_schema(row.get("functions"), "functions", where)
    if own and legacy:
        raise RowError(f"{where}: the row has both `tools` and `functions` (OpenAI's legacy name for them); one would "
                       "be lost. Merge them into `tools`")
    own = own or legacy
    return own if own or not getattr(spec, "tools", None) else read_tools(spec.tools)


@functools.lru_cache(maxsize=16)
def read_tools(path: str) -> list[dict]:
    """The tool schemas in a dataset's `tools:` file (JSON or YAML; a list, or `{tools: [...]}`), checked as a
    row's `tools` column is."""
    p = resolve_path(path)
    name = f"data: tools file {path}"
    try:
        value = yaml.safe_load(decode_utf8(p.read_bytes(), str(p)))  # YAML reads JSON too
    except yaml.YAMLError as e:
        raise UserError(f"{name} is not valid JSON or YAML: {str(e).splitlines()[0]}") from None
    if isinstance(value, dict) and isinstance(value.get("tools"), list):
        value = value["tools"]
    schemas = tools_schema(value, "tools", name)
    if not schemas:
        raise UserError(f"{name} holds no tool schemas; give a list of {{name, description, parameters}} objects")
    return schemas


def _conversation(msgs: list[dict], row: dict, spec: Any, where: str) -> Conversation:
    msgs = with_row_system(msgs, row, spec, where)
    return Conversation.of(_check_trainable(msgs, where), _row_tools(row, spec, where))


def messages_format(row: dict, spec: Any, where: str) -> list[dict]:
    msgs = _get(row, "messages", spec, where)
    if not isinstance(msgs, list) or not msgs:
        raise RowError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects, "
                       f"found {type(msgs).__name__}")
    return _conversation(_messages(msgs, "messages", where), row, spec, where)


def _sharegpt_turn(t: dict, role: str | None, i: int, roles: dict, where: str) -> dict:
    field = f"conversations[{i}]"
    if role not in ROLES:
        raise RowError(f"{where}: {field}.from is {t['from']!r}, which the role map does not know; "
                       f"add it under `roles:` (known: {', '.join(sorted(roles))})")
    if t["from"] == "function_call":  # LLaMA-Factory: the value is the call(s) as JSON
        out = {"role": "assistant", "content": "", "tool_calls": tool_calls(t["value"], f"{field}.value", where)}
    else:
        out = {"role": role, "content": turn_text(role, t["value"], f"{field}.value", where)}
    return with_train_flag(out, t, field, where)  # SlimOrca's per-turn `weight`, axolotl's `train`


def sharegpt_format(row: dict, spec: Any, where: str) -> list[dict]:
    turns = _get(row, "conversations", spec, where)
    if not isinstance(turns, list) or not turns:
        raise RowError(f"{where}: `conversations` must be a non-empty list of {{from, value}} objects")
    roles = {**SHAREGPT_ROLES, **spec.roles}
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RowError(f"{where}: conversations[{i}] must have `from` and `value`")
        out.append(_sharegpt_turn(t, roles.get(t["from"]), i, roles, where))
    return _conversation(out, row, spec, where)


def prompt_completion_format(row: dict, spec: Any, where: str) -> list[dict]:
    """Strings, or TRL's conversational prompt-completion: `prompt` a list of messages ending with the user (or
    tool) turn answered, `completion` the assistant message(s) answering it (or a string). Only the completion is
    trained: the prompt's assistant turns are context (`train: false` unless a message says otherwise)."""
    prompt, completion = _get(row, "prompt", spec, where), _get(row, "completion", spec, where)
    if not isinstance(prompt, list) and not isinstance(completion, list):
        msgs = [{"role": "user", "content": _text(prompt, "prompt", where)},
                {"role": "assistant", "content": _text(completion, "completion", where)}]
        return _conversation(msgs, row, spec, where)  # with the row's tools (xLAM's rows are strings)
    context = (_messages(prompt, "prompt", where) if isinstance(prompt, list)
               else [{"role": "user", "content": _text(prompt, "prompt", where)}])
    answer = (_messages(completion, "completion", where) if isinstance(completion, list)
              else [{"role": "assistant", "content": _text(completion, "completion", where)}])
    if context[-1]["role"] not in ("user", "tool") or answer[0]["role"] != "assistant":
        raise RowError(f"{where}: a conversational `prompt` must end with the user (or tool) turn the `completion` "
                       f"answers, and the completion start with an assistant turn; here the prompt ends with a "
                       f"`{context[-1]['role']}` turn and the completion starts with a `{answer[0]['role']}` turn")
    context = [{**m, "train": m.get("train", False)} if m["role"] == "assistant" else m for m in context]
    return _conversation([*context, *answer], row, spec, where)


def _messages(value: list, field: str, where: str) -> list[dict]:
    if not value:
        raise RowError(f"{where}: `{field}` is an empty list; give messages ({{role, content}}) or a string")
    return [message(m, f"{field}[{i}]", where) for i, m in enumerate(value)]


def text_format(row: dict, spec: Any, where: str) -> str:
    text = _text(_get(row, "text", spec, where), "text", where)
    if not text.strip():
        raise RowError(f"{where}: `text` is empty")
    return text


FORMATS: dict[str, Callable[[dict, Any, str], list[dict] | str]] = {
    "alpaca": alpaca_format,
    "messages": messages_format,
    "sharegpt": sharegpt_format,
    "prompt_completion": prompt_completion_format,
    "text": text_format,
}
