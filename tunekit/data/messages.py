"""One chat message, checked and normalised to what chat templates read.

    {role, content: str, tool_calls?: [{type: function, id?, function: {name, arguments: dict}}],
     tool_call_id?, name?, train?: bool}

- `content` may be a list of parts (`[{"type": "text", "text": ...}]`, the OpenAI / LLaMA-Factory v1 shape):
  all-text parts are joined with "\\n" (as vLLM joins text parts); any other part is refused naming the row.
- `tool_calls` arguments may be an object or a JSON string; both become an object, because the families'
  templates (Qwen2.5, Llama-3.1, Mistral) write `arguments | tojson` and a string would be encoded twice.
- `reasoning_content` (also read: `reasoning`, `thinking`) on an assistant turn is passed to the template under
  the field the template reads (templates.reasoning_field: gpt-oss reads `thinking`), which must render it into
  the turn (checked when the turn is trained).
- `train` (axolotl's per-message flag; `training: bool` and `weight: 0|1` are read as the same) overrides
  `data.train_on` for that assistant turn.
- Roles other tools write for the same turns are read as the four roles (`ROLE_ALIASES`): OpenAI's `developer`
  (system instructions), Gemma's / Vertex AI's `model` (assistant), Llama 3.1's `ipython` and OpenAI's legacy
  `function` (tool results); a legacy `function_call` on an assistant turn is its one tool call.

A conversation is a `Conversation`: the message list itself plus the row's tool schemas (`tools`), so code
that only needs messages (eval, ReFT) keeps treating it as a list.
"""

from __future__ import annotations

import json

from tunekit.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system", "model": "assistant", "ipython": "tool", "function": "tool"}
PASSED_KEYS = ("tool_call_id", "name")
# A turn's reasoning, passed to the template as `reasoning_content` (what Qwen3 and DeepSeek-R1 templates read).
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")  # kept on tool turns for the templates that name the tool / call id


class RowError(UserError):
    pass


class Arguments(dict):
    """Tool-call arguments: an object for templates writing `arguments | tojson` (Qwen, Llama-3.1, Mistral), and its
    JSON text for templates concatenating it as a string (DeepSeek: `'...' + tool['function']['arguments']`)."""

    def __radd__(self, other: object) -> object:
        return other + json.dumps(self, ensure_ascii=False) if isinstance(other, str) else NotImplemented

    def __add__(self, other: object) -> object:
        return json.dumps(self, ensure_ascii=False) + other if isinstance(other, str) else NotImplemented


class Conversation(list):
    """A list of messages plus the tool schemas (`tools=` of the chat template) that come with the row."""

    tools: list[dict] | None = None

    @classmethod
    def of(cls, messages: list[dict], tools: list[dict] | None = None) -> Conversation:
        conv = cls(messages)
        conv.tools = tools or None
        return conv


def content_text(value: object, field: str, where: str, allow_none: bool = False) -> str:
    """A message's text: a string, or a list of text parts joined with newlines."""
    if value is None and allow_none:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise RowError(f"{where}: {field}[{j}] is a `{kind}` part; only text parts "
                               "(`{\"type\": \"text\", \"text\": ...}`) can be trained on (images and other media "
                               "are not supported yet): remove the part or the row")
            texts.append(part["text"])
        return "\n".join(texts)
    raise RowError(f"{where}: `{field}` must be a string or a list of text parts, found {type(value).__name__} "
                   f"({str(value)[:40]!r})")


def turn_text(role: str, value: object, field: str, where: str, allow_none: bool = False) -> str:
    """`content_text`, except that a tool result given as a JSON object is its JSON text (what templates such as
    Llama 3.1's write for one; OpenAI's format has it JSON-encoded)."""
    if role == "tool" and isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return content_text(value, field, where, allow_none)


def _arguments(value: object, field: str, where: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise RowError(f"{where}: {field} is a string but not valid JSON ({e.msg} at column {e.colno}); "
                           "give the arguments as an object or a JSON-encoded object") from None
    if not isinstance(value, dict):
        raise RowError(f"{where}: {field} must be an object (or a JSON string of one), found {type(value).__name__}")
    return Arguments(value)


def tool_call(value: object, field: str, where: str) -> dict:
    """One call, OpenAI shape ({type, id?, function: {name, arguments}}) or flat ({name, arguments})."""
    if not isinstance(value, dict):
        raise RowError(f"{where}: {field} must be an object, found {type(value).__name__}")
    fn = value.get("function", value)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise RowError(f"{where}: {field} has no function name (expected {{\"type\": \"function\", \"function\": "
                       "{\"name\": ..., \"arguments\": {...}}} or {\"name\": ..., \"arguments\": {...}})")
    call = {"type": "function", "function": {"name": fn["name"],
                                             "arguments": _arguments(fn.get("arguments", {}), f"{field}.arguments",
                                                                     where)}}
    if value.get("id") is not None:
        call["id"] = str(value["id"])
    return call


def tool_calls(value: object, field: str, where: str) -> list[dict]:
    if isinstance(value, str):  # ShareGPT `function_call` turns hold the call(s) as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(f"{where}: {field} is not valid JSON ({e.msg} at column {e.colno})") from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise RowError(f"{where}: {field} is an empty list")
    return [tool_call(c, f"{field}[{k}]", where) for k, c in enumerate(calls)]


def tools_schema(value: object, field: str, where: str) -> list[dict] | None:
    """The row's tool schemas: a list (or a JSON string of one, as LLaMA-Factory stores them), OpenAI shape or bare
    function schemas ({name, description, parameters}), which are wrapped as {type: function, function: ...}."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(f"{where}: `{field}` is a string but not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RowError(f"{where}: `{field}` must be a list of tool (function) schemas, found {type(value).__name__}")
    out = []
    for k, t in enumerate(value):
        if "function" not in t and not isinstance(t.get("name"), str):
            raise RowError(f"{where}: {field}[{k}] has no function name (expected {{\"type\": \"function\", "
                           "\"function\": {\"name\": ..., \"parameters\": ...}} or {\"name\": ..., ...})")
        out.append(t if "function" in t else {"type": "function", "function": t})
    return out


def train_flag(m: dict, field: str, where: str) -> bool | None:
    """axolotl's per-message training flag: `train` / `training` (bool) or `weight` (0 or 1); None when absent."""
    for key in ("train", "training"):
        if key in m and m[key] is not None:
            if not isinstance(m[key], bool):
                raise RowError(f"{where}: {field}.{key} must be true or false, found {m[key]!r}")
            return m[key]
    if m.get("weight") is not None:
        if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
            raise RowError(f"{where}: {field}.weight must be 0 or 1 (per-turn loss weights other than on/off are not "
                           f"supported), found {m['weight']!r}")
        return bool(m["weight"])
    return None


def message(m: object, field: str, where: str) -> dict:
    """One {role, content, ...} message checked and normalised (see the module docstring)."""
    if not isinstance(m, dict) or "role" not in m:
        raise RowError(f"{where}: {field} must be an object with `role` and `content`")
    role = ROLE_ALIASES.get(m["role"], m["role"])
    if role not in ROLES:
        raise RowError(f"{where}: {field}.role is {m['role']!r}; expected one of {', '.join(ROLES)} (also read: "
                       f"{', '.join(f'{a} as {r}' for a, r in ROLE_ALIASES.items())})")
    calls = m.get("tool_calls") or ([m["function_call"]] if m.get("function_call") else None)
    if calls is not None and role != "assistant":
        raise RowError(f"{where}: {field} has a tool call but role {role!r}; only assistant turns call tools")
    if "content" not in m and calls is None:
        raise RowError(f"{where}: {field} must have `content`")
    out = {"role": role, "content": turn_text(role, m.get("content"), f"{field}.content", where,
                                              allow_none=calls is not None)}
    if calls is not None:
        out["tool_calls"] = tool_calls(calls, f"{field}.tool_calls", where)
    reasoning = next((m[k] for k in REASONING_KEYS if m.get(k)), None)
    if reasoning is not None:
        if role != "assistant":
            raise RowError(f"{where}: {field} has reasoning but role {role!r}; only assistant turns reason")
        out["reasoning_content"] = content_text(reasoning, f"{field}.reasoning_content", where)
    if role == "tool":
        out.update({k: str(m[k]) for k in PASSED_KEYS if m.get(k) is not None})
    return with_train_flag(out, m, field, where)


def with_train_flag(out: dict, raw: dict, field: str, where: str) -> dict:
    """`out` (a normalised message) with the raw message's training flag (`train_flag`): kept on assistant turns;
    on another role only `false` is accepted (it is never trained anyway)."""
    flag = train_flag(raw, field, where)
    if flag is not None:
        if out["role"] != "assistant" and flag:
            raise RowError(f"{where}: {field} is a {out['role']} turn marked as trained; only assistant turns can be "
                           "trained (use data.train_on: all to train on every token)")
        if out["role"] == "assistant":
            out["train"] = flag
    return out


def merge_system_into_first_user(messages: list[dict]) -> list[dict]:
    """`data.system_role: merge_into_first_user`: system text goes before the first user message (blank line
    between), for templates without a system turn (Gemma-2 raises on one)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    if system:
        first = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
        if first is None:
            rest.insert(0, {"role": "user", "content": system})
        else:
            rest[first] = {**rest[first], "content": f"{system}\n\n{rest[first]['content']}"}
    return Conversation.of(rest, getattr(messages, "tools", None))
