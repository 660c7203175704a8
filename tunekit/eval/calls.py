"""Tool calls as each model family writes them, read into one form.

The reference answers (`tasks.answer_text`) and the tool-call metrics use the Hermes/Qwen form,
`<tool_call>\\n{"name": NAME, "arguments": {...}}\\n</tool_call>`. `canonical_calls` rewrites every other family's
native call syntax into it (docs/eval-merge.md lists them and what each was checked against);
`tool_calls_in` then reads the calls, as {name, arguments}, from that form and from the JSON forms other families write
(`[TOOL_CALLS] [...]`, a bare `{"name": ..., "parameters": ...}`, Command-R's `{"tool_name": ..., "parameters": ...}`).

Native syntax is read from the text decoded with special tokens (the markers of most families are special tokens);
`tools` (the row's tool schemas) says which argument values are strings in the families that write values as bare
text (GLM, Qwen3.5/3.6, Nemotron 3, Seed-OSS, MiniMax-M2), where `75001` could be either.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable

Call = tuple[str, object]  # (name, arguments: an object, or the text that did not read as one)
LITERAL_LIMIT = 100_000  # characters; longer text is not parsed as a Python literal

# a call's start in any family (for "the reference marks a call that does not read as one")
MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|tool_call|>", "<｜tool▁call▁begin｜>", "<|tool_call_begin|>",
           "<|python_tag|>", "to=functions.", "<|START_ACTION|>", "<|tool_call_start|>", "<|tool_call>",
           "<minimax:tool_call>", "<seed:tool_call>", "<function=", '"tool_name"')
# a family's section markers around its calls: dropped with the calls' native text
WRAPPERS = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<|tool_calls_section_begin|>",
            "<|tool_calls_section_end|>", "<minimax:tool_call>", "</minimax:tool_call>")
TAGGED = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def block(name: str, args: object) -> str:
    """One call in the canonical form."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args}, default=str)}\n</tool_call>"


def literal(text: str) -> object:
    """A Python literal (`{'a': True}`), parsed without running code; ValueError when `text` is not one."""
    if len(text) > LITERAL_LIMIT:
        raise ValueError("too long")
    try:
        return ast.literal_eval(text.strip())
    except (SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(str(e)) from None


def value(text: str, kind: object = None) -> object:
    """An argument value written as bare text: kept as text when the schema says string, else JSON, a Python
    literal, or the text."""
    if kind == "string":
        return text
    for parse in (json.loads, literal):
        try:
            return parse(text)
        except ValueError:  # json.JSONDecodeError is a ValueError
            pass
    return text


def json_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def param_types(tools: list | None, name: str) -> dict[str, object]:
    """The JSON-schema type of each parameter of tool `name` (OpenAI `{type: function, function: ...}` or bare)."""
    for tool in tools or ():
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(fn, dict) and fn.get("name") == name:
            props = (fn.get("parameters") or {}).get("properties") or {}
            return {k: v.get("type") for k, v in props.items() if isinstance(v, dict)}
    return {}


def pairs_call(name: str, body: str, pair: re.Pattern, tools: list | None, trim: bool = False) -> list[Call] | None:
    """A call whose arguments are written as key/value tags (`pair` captures key and value); None when `body` holds
    anything else."""
    if re.sub(pair, "", body).strip():
        return None
    types = param_types(tools, name)
    found = pair.findall(body)
    strip = (lambda v: v.removeprefix("\n").removesuffix("\n")) if trim else (lambda v: v)
    return [(name, {k.strip(): value(strip(v), types.get(k.strip())) for k, v in found})]


# ------------------------------------------------------------------------------------------------ the families


HARMONY = re.compile(r"to=functions\.([^\s<]+)(?:(?!<\|message\|>).)*<\|message\|>(.*?)<\|call\|>", re.S)
DEEPSEEK = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)<｜tool▁call▁end｜>", re.S)
DEEPSEEK_V3_BODY = re.compile(r"\A\s*(\S+)\s*```(?:json)?\s*(.*?)\s*```\s*\Z", re.S)
KIMI = re.compile(r"<\|tool_call_begin\|>\s*(.+?)\s*<\|tool_call_argument_begin\|>(.*?)<\|tool_call_end\|>", re.S)
GLM = re.compile(r"<tool_call>\s*([^\s<>{}\[\]\"',]+)\s*(.*?)</tool_call>", re.S)
GLM_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)
XML_FUNCTION = re.compile(r"(?:<(?:seed:)?tool_call>\s*)?<function=([^>\s]+)>(.*?)</function>"
                          r"(?:\s*</(?:seed:)?tool_call>)?", re.S)
XML_PAIR = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.S)
MINIMAX = re.compile(r"<invoke name=\"([^\"]+)\">(.*?)</invoke>", re.S)
MINIMAX_PAIR = re.compile(r"<parameter name=\"([^\"]+)\">(.*?)</parameter>", re.S)
LLAMA_BUILTIN = re.compile(r"<\|python_tag\|>\s*([A-Za-z_]\w*)\.call\(((?:(?!<\|eom_id\|>|<\|eot_id\|>).)*)", re.S)
LFM2 = re.compile(r"<\|tool_call_start\|>\s*(\[.*?\])\s*<\|tool_call_end\|>", re.S)
GEMMA4 = re.compile(r"<\|tool_call>call:([^{\s]+)(\{.*?\})<tool_call\|>", re.S)
GEMMA4_TOKEN = re.compile(r"<\|\"\|>(.*?)<\|\"\|>|([A-Za-z_][\w.-]*)\s*(?=:)|\b(None|True|False)\b", re.S)
LITERAL_IN_TAGS = re.compile(r"<tool_call>\s*([\[{].*?[\]}])\s*</tool_call>", re.S)


def deepseek(m: re.Match, tools: list | None) -> list[Call]:
    """V3/R1: `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>`;
    V3.1: `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`."""
    v3 = DEEPSEEK_V3_BODY.match(m.group(2))
    name, args = (v3.group(1), v3.group(2)) if v3 else (m.group(1).strip(), m.group(2))
    return [(name, json_or_text(args))]


def kimi(m: re.Match, tools: list | None) -> list[Call]:
    """`<|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>ARGS<|tool_call_end|>` (the id names it)."""
    return [(re.sub(r"^functions\.|:\d+$", "", m.group(1)), json_or_text(m.group(2)))]


def python_kwargs(call: ast.Call, source: str) -> dict | None:
    """The keyword arguments of a parsed Python call as values (a literal, or JSON written inside Python, as LFM2
    writes objects); None when it has positional arguments or a value is neither."""
    if call.args or any(kw.arg is None for kw in call.keywords):
        return None
    out = {}
    for kw in call.keywords:
        text = ast.get_source_segment(source, kw.value) or ""
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError):
            try:
                out[kw.arg] = json.loads(text)
            except json.JSONDecodeError:
                return None
    return out


def python_calls(source: str) -> list[Call] | None:
    """`name(k=v, ...)` or a list of them, parsed (never run); None when `source` is anything else."""
    try:
        tree = ast.parse(source.strip(), mode="eval") if len(source) <= LITERAL_LIMIT else None
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    body = tree.body if tree is not None else None
    nodes = body.elts if isinstance(body, ast.List) else [body]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
            return None
        args = python_kwargs(node, source.strip())
        if args is None:
            return None
        calls.append((ast.unparse(node.func), args))
    return calls


def xml_function(m: re.Match, tools: list | None) -> list[Call] | None:
    """`<function=NAME>` with `<parameter=KEY>VALUE</parameter>` tags (Qwen3.5/3.6/Coder and Nemotron 3 inside
    `<tool_call>`, Seed-OSS inside `<seed:tool_call>`), or with a JSON object (Llama 3.1's custom tool format)."""
    if m.group(2).strip().startswith("{"):
        args = json_or_text(m.group(2))
        return [(m.group(1), args)] if isinstance(args, dict) else None
    return pairs_call(m.group(1), m.group(2), XML_PAIR, tools, trim=True)


def llama_builtin(m: re.Match, tools: list | None) -> list[Call] | None:
    """Llama 3.1's built-in tools: `<|python_tag|>brave_search.call(query="...")`."""
    rest = m.group(2).rstrip()
    found = python_calls(f"f({rest[:-1]})") if rest.endswith(")") else None
    return [(m.group(1), found[0][1])] if found else None


def gemma4(m: re.Match, tools: list | None) -> list[Call] | None:
    """Gemma 4: `<|tool_call>call:NAME{key:VALUE,...}<tool_call|>`, strings between `<|"|>` marks, keys bare."""
    out, pos, body = [], 0, m.group(2)
    for t in GEMMA4_TOKEN.finditer(body):
        out.append(body[pos : t.start()])
        if t.group(1) is not None or t.group(2):
            out.append(json.dumps(t.group(1) if t.group(1) is not None else t.group(2)))
        else:
            out.append({"None": "null", "True": "true", "False": "false"}[t.group(3)])
        pos = t.end()
    args = json_or_text("".join(out) + body[pos:])
    return [(m.group(1), args)] if isinstance(args, dict) else None


def literal_in_tags(m: re.Match, tools: list | None) -> list[Call] | None:
    """A `<tool_call>` block holding a Python literal (Hermes function-calling v1 writes
    `{'arguments': {...}, 'name': ...}`); None for JSON (read as it is) or anything else."""
    try:
        json.loads(m.group(1))
        return None
    except json.JSONDecodeError:
        pass
    try:
        found = literal(m.group(1))
    except ValueError:
        return None
    calls = [as_call(obj) for obj in (found if isinstance(found, list) else [found])]
    return [(c["name"], c["arguments"]) for c in calls] if calls and all(calls) else None  # type: ignore[index]


FAMILIES: list[tuple[re.Pattern, Callable[[re.Match, list | None], list[Call] | None]]] = [
    (HARMONY, lambda m, tools: [(m.group(1), json_or_text(m.group(2)))]),  # gpt-oss
    (DEEPSEEK, deepseek),
    (KIMI, kimi),
    (GLM, lambda m, tools: pairs_call(m.group(1), m.group(2), GLM_PAIR, tools)),  # GLM-4.5/4.6
    (XML_FUNCTION, xml_function),
    (MINIMAX, lambda m, tools: pairs_call(m.group(1), m.group(2), MINIMAX_PAIR, tools)),
    (LLAMA_BUILTIN, llama_builtin),
    (LFM2, lambda m, tools: python_calls(m.group(1))),
    (GEMMA4, gemma4),
    (LITERAL_IN_TAGS, literal_in_tags),
]


def native_spans(text: str, tools: list | None = None) -> list[tuple[int, int, list[Call]]]:
    """(start, end, calls) of each native call written in `text`, in order, none overlapping."""
    found = [(m.start(), -m.end(), calls) for pattern, read in FAMILIES for m in pattern.finditer(text)
             if (calls := read(m, tools))]
    spans, end = [], 0
    for start, neg_end, calls in sorted(found, key=lambda f: (f[0], f[1])):
        if start >= end:
            spans.append((start, -neg_end, calls))
            end = -neg_end
    return spans


def _drop(text: str, tokens: Iterable[str]) -> str:
    for token in tokens:
        text = text.replace(token, "")
    return text


def canonical_calls(text: str, tools: list | None = None, strip: Iterable[str] = ()) -> str:
    """`text` with every native tool call rewritten as a canonical `<tool_call>` block, and the `strip` tokens
    (special tokens, longest first) and the families' section markers removed from the text around the calls."""
    strip = [*WRAPPERS, *strip]
    out, pos = [], 0
    for start, end, calls in native_spans(text, tools):
        out.append(_drop(text[pos:start], strip))
        out.append("\n".join(block(name, args) for name, args in calls))
        pos = end
    out.append(_drop(text[pos:], strip))
    return "".join(out)


def native_calls_only(text: str, tools: list | None = None) -> str:
    """Just the native calls written in `text`, as canonical blocks ("" when there are none)."""
    return "\n".join(block(name, args) for _, _, calls in native_spans(text, tools) for name, args in calls)


# ------------------------------------------------------------------------------------------------ reading calls


def as_call(obj: object) -> dict | None:
    """{name, arguments} from a call object: `name` (or Command-R's `tool_name`) and an `arguments` (or
    `parameters`) object, which may be given as a JSON string."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name", obj.get("tool_name"))
    args = obj.get("arguments", obj.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return {"name": name, "arguments": args} if isinstance(name, str) and isinstance(args, dict) else None


def _next_json(text: str, start: int) -> int:
    found = [k for k in (text.find("{", start), text.find("[", start)) if k >= 0]
    return min(found) if found else -1


def json_calls(text: str) -> list[dict]:
    """Every JSON object (alone or in a list) in `text` that is a call, in order."""
    decoder, calls, i = json.JSONDecoder(), [], 0
    while (i := _next_json(text, i)) >= 0:
        try:
            found, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        calls.extend(c for obj in (found if isinstance(found, list) else [found]) if (c := as_call(obj)))
        i = end
    return calls


def tool_calls_in(text: str) -> list[dict]:
    """The tool calls written in `text`, whatever the family's syntax, as {name, arguments}."""
    return json_calls(canonical_calls(text))


def unreadable_call(text: str) -> str | None:
    """The first call `text` marks that does not read as one (a `<tool_call>` block whose body is not a call, or a
    call marker when no call reads at all), or None."""
    canon = canonical_calls(text)
    for m in TAGGED.finditer(canon):
        if not json_calls(m.group(1)):
            return m.group(0)
    if json_calls(canon):
        return None
    starts = [i for marker in MARKERS if (i := text.find(marker)) >= 0]
    return text[min(starts):] if starts else None
