"""Dataset formats: turn one row into a list of chat messages ({role, content})."""

from __future__ import annotations

from collections.abc import Callable

from tunekit.errors import UserError

ROLES = ("system", "user", "assistant", "tool")


class RowError(UserError):
    pass


def _get(row: dict, key: str, columns: dict[str, str], where: str) -> object:
    col = columns.get(key, key)
    if col not in row:
        found = ", ".join(sorted(row)) or "nothing"
        raise RowError(f"{where}: missing column `{col}` (format expects `{key}`); found: {found}. "
                       f"Map it with `columns: {{{key}: YOUR_COLUMN}}`.")
    return row[col]


def _text(value: object, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{where}: `{field}` must be a string, found {type(value).__name__}")
    return value


def messages_format(row: dict, columns: dict[str, str], where: str) -> list[dict]:
    msgs = _get(row, "messages", columns, where)
    if not isinstance(msgs, list) or not msgs:
        raise RowError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"{where}: messages[{i}] must have `role` and `content`")
        if m["role"] not in ROLES:
            raise RowError(f"{where}: messages[{i}].role is {m['role']!r}; expected one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": _text(m["content"], f"messages[{i}].content", where)})
    if not any(m["role"] == "assistant" for m in out):
        raise RowError(f"{where}: the conversation has no assistant turn, so nothing would be trained")
    return out


def prompt_completion_format(row: dict, columns: dict[str, str], where: str) -> list[dict]:
    prompt = _text(_get(row, "prompt", columns, where), "prompt", where)
    completion = _text(_get(row, "completion", columns, where), "completion", where)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


FORMATS: dict[str, Callable[[dict, dict[str, str], str], list[dict]]] = {
    "messages": messages_format,
    "prompt_completion": prompt_completion_format,
}
