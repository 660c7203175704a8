"""Message text reaches the model whatever shape the chat template reads it in, or the row is refused.

- The templates of vision-language processors (Idefics3/SmolVLM, LLaVA-NeXT: TRL's `trl/chat_templates/`) read a
  message's text only from a list of parts (`content[0]['text']`, a loop over parts): a string content rendered
  as nothing (Idefics3: the row trained only `<end_of_utterance>`) or raised. tunekit gives such templates
  `[{type: text, text}]` and the rows train what a parts conversation renders.
- A template that silently drops system messages, renders no message text, drops the assistant's answer, tool
  schemas or tool calls (in trained turns or in the context) is an error naming the row and the fix.
- Generation prompts (eval, ReFT's RL stage, PPO, chat, merge probes) are rendered by the same renderer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.data.build import build_datasets
from tunekit.data.schema import DataConfig
from tunekit.errors import UserError
from tunekit.model.builtin import TOKENIZER_DIR

# TRL's trl/chat_templates/ at f2cd577 (copied verbatim)
IDEFICS3 = "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
LLAVA_NEXT = "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
# handles user and assistant only: a system message renders as nothing (no error)
USER_ASSISTANT_ONLY = ("{% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>\n"
                       "{% elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}<|im_end|>\n{% endif %}"
                       "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."}, {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "It is 6."}]


@pytest.fixture()
def tok():
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    t.add_special_tokens({"additional_special_tokens": ["<end_of_utterance>", "<|im_start|>", "<|im_end|>"]})
    return t


def _build(tok, tmp_path: Path, template: str, rows: list[dict], **options):  # noqa: ANN001, ANN202
    (tmp_path / "t.jinja").write_text(template)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(train=[{"path": str(data), "format": "messages"}], chat_template=str(tmp_path / "t.jinja"),
                     cache_dir=str(tmp_path / "cache"), **options)
    return build_datasets(cfg, tok, seed=0)[0]


def _trained(tok, row: dict) -> str:  # noqa: ANN001
    return tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])


def _as_parts(messages: list[dict]) -> list[dict]:
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]


@pytest.mark.parametrize("name", ["idefics3", "llava_next"])
def test_processor_templates_get_string_content_as_text_parts(name: str, tok, tmp_path: Path) -> None:  # noqa: ANN001
    """The row trains exactly what the template renders for the same conversation written with text parts."""
    template = {"idefics3": IDEFICS3, "llava_next": LLAVA_NEXT}[name]
    row = _build(tok, tmp_path, template, [{"messages": CONV}])[0]
    expected = tok.apply_chat_template(_as_parts(CONV), chat_template=template, tokenize=False)
    assert row["input_ids"] == tok(expected, add_special_tokens=False)["input_ids"]
    text, trained = tok.decode(row["input_ids"]), _trained(tok, row)
    assert all(m["content"] in text for m in CONV)  # nothing the row holds is lost (Idefics3 rendered none of it)
    assert "It is 4." in trained and "It is 6." in trained and "2+2" not in trained and "Be brief" not in trained


def test_a_template_silently_dropping_system_messages_is_an_error_with_the_fix(tok, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match=r"d.jsonl.*does not render system messages.*merge_into_first_user"):
        _build(tok, tmp_path, USER_ASSISTANT_ONLY, [{"messages": CONV}])
    row = _build(tok, tmp_path, USER_ASSISTANT_ONLY, [{"messages": CONV}], system_role="merge_into_first_user")[0]
    assert "Be brief." in tok.decode(row["input_ids"])
    assert "Be brief." not in tok.decode(_build(tok, tmp_path, USER_ASSISTANT_ONLY, [{"messages": CONV[1:]}])[0][
        "input_ids"])  # no system message: nothing to lose, the template is fine


@pytest.mark.parametrize(("template", "message"), [
    ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.text }}<|im_end|>\n{% endfor %}"
     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "renders no message text"),
    ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content if m.role != 'assistant' else m.answer }}"
     "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
     r"does not render the assistant turn's text \(`It is 4.`"),
])
def test_a_template_losing_the_text_is_an_error(template: str, message: str, tok, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match=rf"d.jsonl.*{message}"):
        _build(tok, tmp_path, template, [{"messages": CONV[1:]}])


TOOL_TRACE = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": "", "tool_calls": [
                  {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
              {"role": "tool", "content": "18 C"}, {"role": "assistant", "content": "It is 18 C."}]


@pytest.mark.parametrize("train_on", ["assistant", "last_assistant"])
def test_tool_calls_a_template_drops_are_an_error_in_trained_turns_and_in_the_context(
        train_on: str, tok, tmp_path: Path) -> None:  # noqa: ANN001
    """chatml renders no tool calls: the call was caught only when its turn was trained; in the context (the last
    answer trained alone) the model would have seen a tool result nobody asked for."""
    from tunekit.data.templates import load_template

    with pytest.raises(UserError, match=r"d.jsonl.*does not render tool calls.*`get_weather`"):
        _build(tok, tmp_path, load_template("chatml"), [{"messages": TOOL_TRACE}], train_on=train_on)
    row = _build(tok, tmp_path, load_template("qwen2.5"), [{"messages": TOOL_TRACE}], train_on=train_on)[0]
    assert "get_weather" in tok.decode(row["input_ids"])


def test_preference_prompts_with_tool_calls_a_template_drops_are_an_error() -> None:
    from transformers import AutoTokenizer

    from tunekit.data.preference import check_renders, preference_row
    from tunekit.data.schema import DatasetSpec
    from tunekit.data.templates import load_template, renderer

    t = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    row = preference_row({"prompt": TOOL_TRACE[:3], "chosen": "It is 18 C.", "rejected": "No idea."},
                         DatasetSpec(path="p.jsonl", format="preference"), "p.jsonl:1")
    with pytest.raises(UserError, match=r"p.jsonl:1: .*does not render tool calls"):
        check_renders(renderer(t, load_template("chatml"), "chatml"), row, "p.jsonl:1")
    check_renders(renderer(t, load_template("qwen2.5"), "qwen2.5"), row, "p.jsonl:1")


def test_generation_prompts_use_the_training_renderer(tok) -> None:  # noqa: ANN001
    """eval, ReFT's RL stage, PPO, chat and merge probes render prompts as training does: with text parts for a
    processor's template (Idefics3 rendered an empty prompt), and a tokenizer without a template is a clear error."""
    from tunekit.eval.tasks import prompt_texts

    tok.chat_template = IDEFICS3
    assert prompt_texts(tok, [CONV[1:2]]) == ["<|begin_of_text|>User: What is 2+2?<end_of_utterance>\nAssistant:"]
    tok.chat_template = None
    with pytest.raises(UserError, match="no chat template.*data.chat_template"):
        prompt_texts(tok, [CONV[1:2]])


CALLS_WITHOUT_RESULTS = (  # renders tool calls, but no tool messages
    "{% for m in messages %}{% if m.role != 'tool' %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
COLLAPSES_BLANK_LINES = (  # falcon-instruct's content handling: blank lines collapsed, lines trimmed
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.replace('\n\n', '\n') | trim }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_tool_results_a_template_drops_are_an_error(tok, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match=r"d.jsonl.*does not render the text of a `tool` message \(`18 C`"):
        _build(tok, tmp_path, CALLS_WITHOUT_RESULTS, [{"messages": TOOL_TRACE}])


def test_a_template_changing_only_whitespace_keeps_the_text(tok, tmp_path: Path) -> None:  # noqa: ANN001
    conv = [{"role": "user", "content": "Para one.\n\nPara two."}, {"role": "assistant", "content": "A.\n\nB."}]
    row = _build(tok, tmp_path, COLLAPSES_BLANK_LINES, [{"messages": conv}])[0]
    assert "Para one.\nPara two." in tok.decode(row["input_ids"]) and "A.\nB." in _trained(tok, row)
