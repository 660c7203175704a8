"""Chat templates: the tokenizer's own, a built-in one shipped as a jinja file, or a user's .jinja file.

`apply_chat_template_choice` sets `tokenizer.chat_template` to the template actually used, so the run's saved
tokenizer (final/) carries it and inference renders prompts exactly as training did.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunekit.errors import UserError, did_you_mean
from tunekit.paths import asset

TEMPLATES_DIR = asset("templates")
BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": "chatml.jinja",
    "llama3": "llama3.jinja",
    "mistral": "mistral.jinja",
    "gemma": "gemma.jinja",
    "qwen": "qwen.jinja",
    "alpaca": "alpaca.jinja",
    # The real templates of model families (verbatim; sources below), named by family.
    "qwen2.5": "qwen2.5.jinja",
    "qwen3": "qwen3.jinja",
    "llama3.1": "llama3.1.jinja",
    "llama3.2": "llama3.2.jinja",
    "mistral-v0.3": "mistral-v0.3.jinja",
    "gemma2": "gemma2.jinja",
    "gemma3": "gemma3.jinja",
    "phi3": "phi3.jinja",
    "phi3.5": "phi3.5.jinja",
    "phi4": "phi4.jinja",
    "deepseek-v3": "deepseek-v3.jinja",
    "deepseek-r1-distill": "deepseek-r1-distill.jinja",
}
_TRL = "huggingface/trl trl/chat_templates/{}@{} (TRL's copy of the hub template, listed as original in its README)"
# Where the shipped real-model templates come from (the others are tunekit's own minimal ones). The hub is not
# reachable from where these were collected, so each is a public repository's copy of the model's
# tokenizer_config.json `chat_template`, byte for byte.
TEMPLATE_SOURCES: dict[str, str] = {
    "qwen2.5": "the `chat_template` of Qwen/Qwen2.5-7B-Instruct's tokenizer_config.json (Hugging Face hub), the "
    "same for every Qwen2.5-*-Instruct size; cross-checked against chujiezheng/chat_templates "
    "chat_templates/qwen2.5-instruct.jinja@06e8a5b and identical to "
    + _TRL.format("qwen2_5.jinja", "d6d5efcef"),
    "qwen3": _TRL.format("qwen3.jinja", "f44cf20bd8c9e43954c7e2f72b01e8070fbc38d1") + "; Qwen/Qwen3-*",
    "llama3.1": _TRL.format("llama3_1.jinja", "abe20a8c5edaa0e01c515092281c1b23c07a202c") + "; meta-llama/Llama-3.1-*-Instruct",
    "llama3.2": _TRL.format("llama3_2.jinja", "abe20a8c5edaa0e01c515092281c1b23c07a202c") + "; meta-llama/Llama-3.2-*-Instruct "
    "(the date line uses strftime_now: today's date)",
    "mistral-v0.3": _TRL.format("mistral.jinja", "4a56de4bd88d182856b8a92798cc285bd50d35f0") + "; the v3 template of "
    "mistralai/Mistral-7B-Instruct-v0.3 (tool calls with 9-character ids; the system message goes into the last user "
    "turn); identical to the Mistral-Large-Instruct-2407 v3 case in ggml-org/llama.cpp tests/test-chat-template.cpp@03f94f1",
    "gemma2": _TRL.format("gemma.jinja", "32569957059f8ac64b03d6d7544b72df829f3b57") + "; google/gemma-2-*-it (and Gemma v1): "
    "no system role",
    "gemma3": _TRL.format("gemma3.jinja", "909d0c16bba33cac5bccdb2e7d587bae07321ef7") + "; google/gemma-3-*-it: the system "
    "text is put in the first user turn",
    "phi3": _TRL.format("phi3.jinja", "644d173850c625974b07739c1d2ea816183a5dd2") + "; microsoft/Phi-3-*-instruct: EOS "
    "only at the end of a document",
    "phi3.5": _TRL.format("phi3_5.jinja", "5f9a2f3efb39a0c03b4817c87fe42c6e60a830a7") + "; microsoft/Phi-3.5-mini-instruct",
    "phi4": "microsoft/phi-4's template as quoted identically by several public repositories (found by content in the "
    "search index, no single citable file); not verified against the hub. The earlier phi-4 release template "
    "(assistant header after every user turn, ggml-org/llama.cpp tests/test-chat-template.cpp@03f94f1 `phi-4`) "
    "differs",
    "deepseek-v3": _TRL.format("deepseekv3.jinja", "9157aa76a82ab429d40b79905833152c360b2226") + ", listed there as "
    "DeepSeek-V3's; its generation prompt opens `<think>` as DeepSeek-R1's does. Strips reasoning (text up to "
    "</think>) from every assistant turn; tool-call arguments must be strings (tunekit passes them as JSON text)",
    "deepseek-r1-distill": "ggml-org/llama.cpp models/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"
    "@20bdc4fac4e8779e5b73646f4b3b24a9964aa566 (llama.cpp's copy of the hub template); strips reasoning from every "
    "assistant turn, generation prompt `<｜Assistant｜><think>\\n`",
}


def load_template(choice: str) -> str:
    """The template text for a built-in name or a .jinja path."""
    if choice in BUILTIN_TEMPLATES:
        return (TEMPLATES_DIR / BUILTIN_TEMPLATES[choice]).read_text(encoding="utf-8")
    p = Path(choice).expanduser()
    if p.is_file():
        return p.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is not template text
    raise UserError(f"data.chat_template: `{choice}` is neither a built-in template ({', '.join(BUILTIN_TEMPLATES)}) "
                    f"nor an existing .jinja file (relative to {Path.cwd()}).{did_you_mean(choice, BUILTIN_TEMPLATES)}")


def _literal(value: bool | int | float | str) -> str:
    """A jinja literal for a recipe value (jinja reads `true`/`false` and quoted strings with escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def with_variables(template: str, variables: dict[str, Any]) -> str:
    """`template` with `{%- set NAME = VALUE -%}` lines in front (data.chat_template_kwargs); each name must be one
    the template reads. Applying the same variables twice changes nothing."""
    for name in variables:
        if not re.search(rf"\b{re.escape(name)}\b", template):
            names = set(re.findall(r"\b[A-Za-z_]\w*\b", template))
            raise UserError(f"data.chat_template_kwargs.{name}: the chat template never reads `{name}`, so it would "
                            "have no effect. Remove it, or choose the template that reads it (data.chat_template)."
                            + did_you_mean(name, names))
    head = "".join(f"{{%- set {k} = {_literal(v)} -%}}\n" for k, v in variables.items())
    return template if template.startswith(head) else head + template


def check_choice(choice: str | None, variables: dict[str, Any]) -> None:
    """What can be checked without the tokenizer (`tunekit validate`): a named or file template exists and reads
    every data.chat_template_kwargs name. The tokenizer's own template (choice null) is checked at train time."""
    if choice is not None:
        text = load_template(choice)
        if variables:
            with_variables(text, variables)


def apply_chat_template_choice(tokenizer: Any, choice: str | None, needed: bool = True,
                               variables: dict[str, Any] | None = None) -> str | None:
    """Set the tokenizer's template from the recipe choice (with `variables` set in it: data.chat_template_kwargs);
    returns the template text in use (None if none)."""
    if choice is not None:
        tokenizer.chat_template = load_template(choice)
    named = getattr(tokenizer, "chat_template", None)
    template = named.get("default") if isinstance(named, dict) else named  # several: training uses the default
    if template and variables:
        template = with_variables(template, variables)  # the other named templates (tool_use, rag) stay as they are
        tokenizer.chat_template = {**named, "default": template} if isinstance(named, dict) else template
    if not template and needed:
        raise UserError(
            "data.chat_template: the tokenizer has no chat template and the recipe names none, so chat data cannot "
            f"be rendered. Set `data.chat_template:` to a built-in template ({', '.join(BUILTIN_TEMPLATES)}) or to a "
            "path to a .jinja file, matching the format the model was (or will be) used with."
        )
    return template or None


class TemplateFailure(UserError):
    """The chat template itself raised (`raise_exception(...)`, an undefined variable); callers add the row."""


# Rules of real templates about tool use, by words of their own messages (raise_exception), and the fix.
_TOOL_RULES = (
    ("length 9", " The template (Mistral v0.3's) needs every tool call to have an `id` of exactly 9 letters or "
     "digits (e.g. `a1B2c3D4e`) and the tool turn that answers it the same `tool_call_id`: give the rows such ids "
     "(OpenAI ids such as `call_abc123` are longer; ShareGPT `function_call` / `observation` turns carry no ids, so "
     "write such rows in the `messages` format with ids)."),
    ("single tool-call", " The template (Llama 3.1's) renders one tool call per assistant turn: give each call its "
     "own assistant turn followed by its tool result (one tool call per assistant turn), or choose a template that "
     "renders parallel calls (data.chat_template: qwen2.5)."),
    ("both content and thinking", " The template (gpt-oss's) renders the text beside a tool call as the call's "
     "analysis, as it renders reasoning: keep one of the two (move the text into `reasoning_content`, or remove "
     "it)."),
)


def _hint(message: str, tools: bool, renders_tools: bool = False) -> str:
    low = message.lower()
    rule = next((fix for words, fix in _TOOL_RULES if words in low), None)
    if rule:
        return rule
    if "system" in low and ("not supported" in low or "not allowed" in low):
        return (" The template has no system turn: set `data.system_role: merge_into_first_user` (the system text "
                "is put before the first user message) or remove the system messages / `system:` prompt.")
    if "alternate" in low:
        return (" The template needs strictly alternating user/assistant turns: merge consecutive turns of one "
                "role, remove a turn that breaks the order (a conversation opening with an assistant turn, such as a "
                "ShareGPT `gpt` greeting, does), or choose a template that accepts this conversation shape.")
    undefined = re.search(r"'(\w+)' is undefined", message)
    if undefined and undefined.group(1).endswith("_token"):
        return (f" The template reads `{undefined.group(1)}`, which this tokenizer does not define: use the "
                "tokenizer the template was written for (model.tokenizer) or another data.chat_template.")
    if tools and renders_tools:
        return (" The template renders tools, so this row's tool calls or results break one of its own rules (its "
                "message above): change the rows to follow it, or choose another template (data.chat_template).")
    if tools:
        return " The row has tools or tool calls: choose a template that renders them (data.chat_template: qwen2.5)."
    return ""


# The message field a template reads a turn's reasoning from: Qwen3, DeepSeek-R1, Nemotron, GLM `reasoning_content`;
# gpt-oss (harmony) `thinking`; some `reasoning`. Messages carry it as `reasoning_content` (messages.py).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def reasoning_field(template: str) -> str:
    """The field `template` reads reasoning from: the first of _REASONING_FIELDS it uses as a message attribute
    (`message.thinking`, `m['thinking']`, `"thinking" in message`); `reasoning_content` when it uses none."""
    for name in _REASONING_FIELDS:
        if re.search(rf"""(\.{name}\b|\[\s*['"]{name}['"]\s*\]|['"]{name}['"]\s+in\s+\w+)""", template):
            return name
    return "reasoning_content"


def _with_reasoning_as(field: str, messages: list[dict]) -> list[dict]:
    if field == "reasoning_content":
        return messages
    return [{**{k: v for k, v in m.items() if k != "reasoning_content"}, field: m["reasoning_content"]}
            if m.get("reasoning_content") is not None else m for m in messages]


_PROBE, _SYSTEM_PROBE = "tunekit probe", "tunekit system probe"


def _rendered(render: Callable[..., str], messages: list[dict], tools: list | None = None) -> str | None:
    """A probe conversation rendered with the generation prompt; None when the template refuses it."""
    try:
        return render(messages, True, tools)
    except Exception:  # noqa: BLE001  (a template refusing a made-up conversation tells nothing)
        return None


def _probe(render: Callable[..., str], messages: list[dict], text: str) -> bool | None:
    """Whether `text` is in the rendering of a probe conversation; None when the template refuses it."""
    out = _rendered(render, messages)
    return None if out is None else text in out


def _content_shape(render: Callable[..., str]) -> str:
    """How the template reads a message's text: "string"; "parts" when it renders text only from a list of parts
    (`[{type: text, text}]`: vision-language processors' templates, Idefics3/SmolVLM and LLaVA-NeXT, index
    `content[0]['text']` or loop over the parts, so a string is an error or, worse, renders as nothing); "none" when
    it renders neither (the user's text would be lost)."""
    as_string = _probe(render, [{"role": "user", "content": _PROBE}], _PROBE)
    if as_string is not False:
        return "string"
    as_parts = _probe(render, [{"role": "user", "content": [{"type": "text", "text": _PROBE}]}], _PROBE)
    return "parts" if as_parts else "string" if as_parts is None else "none"


def _drops_system(render: Callable[..., str], parts: bool) -> bool:
    """The template renders a conversation with a system message without error but without the system text (a
    template handling only user and assistant roles)."""
    msgs = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": _PROBE}]
    return _probe(render, _as_parts(msgs) if parts else msgs, _SYSTEM_PROBE) is False


_TOOL_PROBE = [{"type": "function", "function": {"name": "tunekit_probe_tool", "description": "probe",
                                                  "parameters": {"type": "object", "properties": {}}}}]


def _ignores_tools(render: Callable[..., str], parts: bool) -> bool:
    """The template renders a conversation the same with tool schemas as without (it has no tool support)."""
    msgs = [{"role": "user", "content": _PROBE}]
    msgs = _as_parts(msgs) if parts else msgs
    with_tools = _rendered(render, msgs, _TOOL_PROBE)
    return with_tools is not None and with_tools == _rendered(render, msgs)


def tools_ignored(label: str) -> str:
    return (f"the row has tool schemas (`tools`) but {label} ignores them, so the model would never see the tools "
            "it may call. Choose a template that renders `tools` (data.chat_template: qwen2.5, or the model's own "
            "tool-capable template).")


def _as_parts(messages: list[dict]) -> list[dict]:
    """String contents as one text part each (what processors' templates read; None stays None)."""
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str) else m
            for m in messages]


def _check_content(label: str, shape: str, drops_system: bool, messages: list[dict]) -> None:
    if shape == "none":
        raise TemplateFailure(f"{label} renders no message text (neither a string `content` nor a list of text "
                              "parts), so the conversation would be lost; choose another data.chat_template.")
    if drops_system and messages and messages[0]["role"] == "system":
        raise TemplateFailure(f"{label} does not render system messages (it handles only other roles), so the "
                              "system text would be silently lost. Set `data.system_role: merge_into_first_user` "
                              "(the system text is put before the first user message), choose a template with a "
                              "system turn, or remove the system messages / `system:` prompt.")


_SPACE = re.compile(r"\s+")


def shown(content: str, text: str) -> bool:
    """`content` is in `text` as written, JSON-escaped (`| tojson`), or with its whitespace changed (templates that
    trim lines or collapse blank lines: falcon-instruct's `.replace('\\n\\n', '\\n')`)."""
    return (not content or content in text or json.dumps(content)[1:-1] in text
            or _SPACE.sub(" ", content) in _SPACE.sub(" ", text))


def _check_rendered(label: str, messages: list[dict], text: str) -> None:
    """Every tool call and every user or tool message's text is in the rendering (a call by its function's name, or
    by its id for a template writing ids that name the function; a text as written or JSON-escaped): a template
    without tool support drops calls and results, trained turns or not. System texts are checked by a probe (one
    family moves them), assistant answers where their turn is trained (`masking._check_turn`)."""
    for m in messages:
        for call in m.get("tool_calls") or ():
            name, call_id = call["function"]["name"], call.get("id")
            if name not in text and not (call_id and str(call_id) in text):
                raise TemplateFailure(
                    f"{label} does not render tool calls (the assistant turn's call to `{name}` is missing from the "
                    "rendered conversation), so the model would see tool results without the calls that asked for "
                    "them. Choose a template that renders `tool_calls` (data.chat_template: qwen2.5, or the model's "
                    "own tool-capable template).")
        content = m.get("content")
        if m["role"] in ("user", "tool") and isinstance(content, str) and not shown(content.strip(), text):
            raise TemplateFailure(
                f"{label} does not render the text of a `{m['role']}` message (`{content.strip()[:60]}` is missing "
                "from the rendered conversation), so the model would be trained without it. Check the rendering "
                "with `tunekit preprocess RECIPE --show 2` and choose a template that renders every role "
                "(data.chat_template).")


def renderer(tokenizer: Any, template: str, name: str | None = None) -> Any:
    """A function (messages, add_generation_prompt, tools) -> str rendering with `template` like apply_chat_template.

    Errors raised inside the template become `TemplateFailure` with the template's own message and a fix where
    one is known; `render.template_name` names the template for other errors (e.g. tools it cannot render).
    """
    import jinja2

    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    label = f"data.chat_template `{name}`" if name else "the tokenizer's chat template"
    try:  # transformers' own compiled, sandboxed jinja environment (cached), without per-call overhead
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(template)

        def _render(messages: list[dict], add_generation_prompt: bool, tools: list | None) -> str:
            return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                   documents=None, **special)
    except ImportError:  # pragma: no cover - older/newer transformers without the helper

        def _render(messages: list[dict], add_generation_prompt: bool, tools: list | None) -> str:
            return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, tools=tools,
                                                 add_generation_prompt=add_generation_prompt)

    field = reasoning_field(template)
    shape = _content_shape(_render)
    drops_system = _drops_system(_render, shape == "parts")
    no_tools = _ignores_tools(_render, shape == "parts")

    def render(messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> str:
        _check_content(label, shape, drops_system, messages)
        if tools and no_tools:
            raise TemplateFailure(tools_ignored(label))
        try:
            shaped = _with_reasoning_as(field, messages)
            text = _render(_as_parts(shaped) if shape == "parts" else shaped, add_generation_prompt, tools)
            _check_rendered(label, messages, text)
            return text
        except (jinja2.TemplateError, TypeError) as e:  # TypeError: e.g. a template adding a string to None
            has_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
            raise TemplateFailure(f"{label} raised an error: {e}.{_hint(str(e), has_tools, not no_tools)}") from None

    render.template_name = label  # type: ignore[attr-defined]
    render.eos_token = special.get("eos_token")  # type: ignore[attr-defined]
    render.special_tokens = special_token_texts(tokenizer)  # type: ignore[attr-defined]
    return render


def special_token_texts(tokenizer: Any) -> list[str]:
    """The text of every special token (the named ones and added tokens marked special), longest first."""
    named = [v for v in tokenizer.special_tokens_map.values() if isinstance(v, str)]
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted({*named, *(t.content for t in added.values() if t.special)}, key=len, reverse=True)


def tokenizer_renderer(tokenizer: Any) -> Any:
    """A renderer for the tokenizer's (default) chat template: the one the data stage set (data.chat_template)."""
    template = getattr(tokenizer, "chat_template", None)
    text = template.get("default") if isinstance(template, dict) else template
    if not text:
        raise UserError("the tokenizer has no chat template, so chat prompts cannot be rendered: set "
                        f"data.chat_template (a built-in one: {', '.join(BUILTIN_TEMPLATES)}; or a .jinja file)")
    render = renderer(tokenizer, text)
    render.template = template  # type: ignore[attr-defined]
    return render


def generation_prompts(tokenizer: Any, prompts: list[list[dict]]) -> list[str]:
    """Each prompt rendered up to the assistant's turn (with its tool schemas, if any) by the renderer training
    uses, so generation sees what training showed (text parts for processors' templates, the same checks)."""
    render = tokenizer_renderer(tokenizer)
    return [render(list(p), add_generation_prompt=True, tools=getattr(p, "tools", None)) for p in prompts]
