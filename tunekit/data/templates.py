"""Chat templates: the tokenizer's own, a built-in one shipped as a jinja file, or a user's .jinja file.

`apply_chat_template_choice` sets `tokenizer.chat_template` to the template actually used, so the run's saved
tokenizer (final/) carries it and inference renders prompts exactly as training did.
"""

from __future__ import annotations

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


def renderer(tokenizer: Any, template: str) -> Any:
    """A function (messages, add_generation_prompt) -> str rendering with `template` like apply_chat_template."""
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    try:  # transformers' own compiled, sandboxed jinja environment (cached), without per-call overhead
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(template)

        def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
            return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                                   documents=None, **special)
    except ImportError:  # pragma: no cover - older/newer transformers without the helper

        def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
            return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
    return render
