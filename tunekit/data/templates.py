"""Chat templates: the tokenizer's own, a built-in one shipped as a jinja file, or a user's .jinja file.

`apply_chat_template_choice` sets `tokenizer.chat_template` to the template actually used, so the run's saved
tokenizer (final/) carries it and inference renders prompts exactly as training did.
"""

from __future__ import annotations

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
    "qwen2.5": "qwen2.5.jinja",  # tool calling (tools=, tool_calls, tool turns)
}
# Where the shipped real-model templates come from (verbatim copies; the others are tunekit's own minimal ones).
TEMPLATE_SOURCES: dict[str, str] = {
    "qwen2.5": "the `chat_template` of Qwen/Qwen2.5-7B-Instruct's tokenizer_config.json (Hugging Face hub), the "
    "same for every Qwen2.5-*-Instruct size; cross-checked against chujiezheng/chat_templates "
    "chat_templates/qwen2.5-instruct.jinja@06e8a5b",
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


def apply_chat_template_choice(tokenizer: Any, choice: str | None, needed: bool = True) -> str | None:
    """Set the tokenizer's template from the recipe choice; returns the template text in use (None if none)."""
    if choice is not None:
        tokenizer.chat_template = load_template(choice)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: training uses the default one
        template = template.get("default")
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

    def render(messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> str:
        try:
            return _render(messages, add_generation_prompt, tools)
        except (jinja2.TemplateError, TypeError) as e:  # TypeError: e.g. a template adding a string to None
            has_tools = bool(tools) or any(m.get("tool_calls") for m in messages)
            raise TemplateFailure(f"{label} raised an error: {e}.{_hint(str(e), has_tools)}") from None

    render.template_name = label  # type: ignore[attr-defined]
    return render
