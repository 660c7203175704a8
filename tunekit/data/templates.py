"""Chat templates: the tokenizer's own, a built-in one shipped as a jinja file, or a user's .jinja file.

`apply_chat_template_choice` sets `tokenizer.chat_template` to the template actually used, so the run's saved
tokenizer (final/) carries it and inference renders prompts exactly as training did.
"""

from __future__ import annotations

import json
import re
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
        return p.read_text(encoding="utf-8")
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


def _hint(message: str, tools: bool) -> str:
    low = message.lower()
    if "system" in low and ("not supported" in low or "not allowed" in low):
        return (" The template has no system turn: set `data.system_role: merge_into_first_user` (the system text "
                "is put before the first user message) or remove the system messages / `system:` prompt.")
    if "alternate" in low:
        return (" The template needs strictly alternating user/assistant turns: merge consecutive turns of one "
                "role, or choose a template that accepts this conversation shape.")
    undefined = re.search(r"'(\w+)' is undefined", message)
    if undefined and undefined.group(1).endswith("_token"):
        return (f" The template reads `{undefined.group(1)}`, which this tokenizer does not define: use the "
                "tokenizer the template was written for (model.tokenizer) or another data.chat_template.")
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

    def render(messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> str:
        try:
            return _render(_with_reasoning_as(field, messages), add_generation_prompt, tools)
        except (jinja2.TemplateError, TypeError) as e:  # TypeError: e.g. a template adding a string to None
            has_tools = bool(tools) or any(m.get("tool_calls") for m in messages)
            raise TemplateFailure(f"{label} raised an error: {e}.{_hint(str(e), has_tools)}") from None

    render.template_name = label  # type: ignore[attr-defined]
    render.eos_token = special.get("eos_token")  # type: ignore[attr-defined]
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    render.special_tokens = sorted({*special.values(), *(t.content for t in added.values() if t.special)},  # type: ignore[attr-defined]
                                   key=len, reverse=True)
    return render
