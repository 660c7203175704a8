"""Template shapes beyond the shipped families, each with a small hand-written template of that structure (not a
copy of the family's):

- reasoning read from another field than `reasoning_content` (gpt-oss's harmony template reads
  `message.thinking`; others `message.reasoning`): passed under the field the template reads, so it is rendered
  and trained, not refused as "not rendered";
- turns opened by headers and closed by nothing (GLM-4.5/4.6: `<|user|>`, `<|assistant|>`, `<|observation|>`):
  the header that opens the next turn is what the model writes to stop, and is trained as the end of turn;
- a generation prompt that opens `<think>` with the template's own reasoning format (Nemotron 3:
  `<think>\nR\n</think>\nA`, an empty `<think></think>` on turns without reasoning and on tool-call turns):
  the turn is trained in that format after the prompt, never with a second think block;
- the latest answer rendered with an empty think block in place of its reasoning (Kimi-K2-Thinking): each turn
  is trained alone with its reasoning inside the block; a template writing the tool call's id where the call
  is named (Kimi-K2) needs ids that name the function, and says so;
- a generation prompt ending with a block the rendered turn does not have (Gemma 4's empty thought channel
  `<|channel>thought\n<channel|>` when thinking is off): the model writes the turn after that block.
"""

from __future__ import annotations

import pytest

from tunekit.data.masking import conversation_examples, tokenize_texts
from tunekit.data.messages import Conversation, message
from tunekit.data.templates import reasoning_field, renderer
from tunekit.errors import UserError
from tunekit.model.builtin import TOKENIZER_DIR

# harmony-like: analysis channel from `thinking`, dropped for turns before the last user turn; the last turn
# ends with <|return|>, earlier ones with <|end|>; generation prompt <|start|>assistant
HARMONY = """{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}<|start|>user<|message|>{{ m.content }}<|end|>
{%- elif m.role == 'assistant' -%}
{%- if m.thinking and loop.index0 > ns.last_user -%}<|start|>assistant<|channel|>analysis<|message|>{{ m.thinking }}<|end|>{%- endif -%}
<|start|>assistant<|channel|>final<|message|>{{ m.content }}{{ '<|return|>' if loop.last else '<|end|>' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"""
# reads `message['reasoning']` inside a think block
BRACKETS = """{%- for m in messages -%}<|im_start|>{{ m.role }}
{% if m.role == 'assistant' and m['reasoning'] %}<think>{{ m['reasoning'] }}</think>{% endif %}{{ m.content }}<|im_end|>
{% endfor -%}{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}"""
SPECIAL = ["<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>", "<|tool_call_begin|>",
           "<|tool_call_argument_begin|>", "<|tool_call_end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|observation|>", "<|start|>", "<|message|>", "<|end|>", "<|return|>", "<|channel|>", "<|im_start|>", "<|im_end|>"]


def _tok():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    return tok


def _reasoning_conv() -> Conversation:
    raw = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "thinking": "Add two and two.", "content": "4"},
           {"role": "user", "content": "3+3?"}, {"role": "assistant", "reasoning": "Add three and three.", "content": "6"}]
    return Conversation.of([message(m, f"messages[{k}]", "test") for k, m in enumerate(raw)])


def test_the_field_a_template_reads_is_found() -> None:
    assert reasoning_field(HARMONY) == "thinking"
    assert reasoning_field(BRACKETS) == "reasoning"
    assert reasoning_field("{% if 'thinking' in message %}{{ message['thinking'] }}{% endif %}") == "thinking"
    assert reasoning_field("{{ m.reasoning_content }} {{ m.thinking }}") == "reasoning_content"  # both: the usual one
    assert reasoning_field("{{ m.content }}") == "reasoning_content"


def test_harmony_style_template_trains_the_analysis_channel_of_each_turn() -> None:
    """Each turn is its own example (the template drops earlier turns' analysis and ends the last turn with
    <|return|>); the trained text is what the model writes after `<|start|>assistant`: the analysis channel with
    the reasoning, then the final channel and <|return|>."""
    tok = _tok()
    examples = conversation_examples(renderer(tok, HARMONY), _reasoning_conv(), "assistant", "auto", "test")
    trained = [text[a:b] for text, spans in examples for a, b in spans]
    assert trained == [
        "<|channel|>analysis<|message|>Add two and two.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
        "<|channel|>analysis<|message|>Add three and three.<|end|><|start|>assistant<|channel|>final<|message|>6"
        "<|return|>"]
    for text, [(a, _)] in examples:
        assert text[:a].endswith("<|start|>user<|message|>2+2?<|end|><|start|>assistant") or \
            text[:a].endswith("<|start|>user<|message|>3+3?<|end|><|start|>assistant")


@pytest.mark.parametrize("train_reasoning", [True, False])
def test_bracket_field_template_renders_and_masks_reasoning(train_reasoning: bool) -> None:
    tok = _tok()
    (text, spans), = conversation_examples(renderer(tok, BRACKETS), _reasoning_conv(), "assistant", "auto", "test",
                                           train_reasoning=train_reasoning)
    trained = [text[a:b] for a, b in spans]
    if train_reasoning:
        assert trained == ["<think>Add two and two.</think>4<|im_end|>\n", "<think>Add three and three.</think>6<|im_end|>\n"]
    else:  # the reasoning stays in the context, the loss starts after it
        assert trained == ["</think>4<|im_end|>\n", "</think>6<|im_end|>\n"] and "Add two and two." in text


def test_a_template_reading_no_reasoning_field_is_still_refused() -> None:
    chatml = BRACKETS.replace("{% if m.role == 'assistant' and m['reasoning'] %}<think>{{ m['reasoning'] }}</think>"
                              "{% endif %}", "")
    with pytest.raises(UserError, match="does not render the assistant turn's `reasoning_content`"):
        conversation_examples(renderer(_tok(), chatml), _reasoning_conv(), "assistant", "auto", "test")


GLM_LIKE = """{%- for m in messages -%}
{%- if m.role == 'system' -%}<|system|>
{{ m.content }}
{%- elif m.role == 'user' -%}<|user|>
{{ m.content }}
{%- elif m.role == 'assistant' -%}<|assistant|>
{{ m.content or '' }}{%- for c in m.tool_calls or [] -%}<tool_call>{{ c.function.name }}</tool_call>{%- endfor -%}
{%- elif m.role == 'tool' -%}{%- if messages[loop.index0 - 1].role != 'tool' -%}<|observation|>{%- endif -%}
<tool_response>{{ m.content }}</tool_response>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"""


def _conv(raw: list[dict]) -> Conversation:
    return Conversation.of([message(m, f"messages[{k}]", "test") for k, m in enumerate(raw)])


THREE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "Thanks"},
         {"role": "assistant", "content": "You are welcome."}]
TOOLS = [{"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
             "name": "get_weather", "arguments": {"city": "Paris"}}}]},
         {"role": "tool", "content": "18 C"}, {"role": "assistant", "content": "It is 18 C."}]


@pytest.mark.parametrize("multi_turn", ["auto", "per_turn"])
def test_header_delimited_template_trains_the_next_header_as_the_end_of_turn(multi_turn: str) -> None:
    """Every assistant turn is trained with the special token that opens the next turn (`<|user|>` after an
    answer, `<|observation|>` after tool calls); the last turn gets the header a user turn would open with. The
    context before each turn is the template's own generation-prompt rendering."""
    tok = _tok()
    render = renderer(tok, GLM_LIKE)
    for raw, want in ((THREE, ["\nHello!<|user|>", "\n4<|user|>", "\nYou are welcome.<|user|>"]),
                      (TOOLS, ["\n<tool_call>get_weather</tool_call><|observation|>", "\nIt is 18 C.<|user|>"])):
        conv = _conv(raw)
        examples = conversation_examples(render, conv, "assistant", multi_turn, "test")
        assert len(examples) == (1 if multi_turn == "auto" else len(want))  # prefixes render consistently
        assert [text[a:b] for text, spans in examples for a, b in spans] == want
        turns = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
        starts = [(text, a) for text, spans in examples for a, _ in spans]
        for i, (text, a) in zip(turns, starts):
            assert text[:a] == render(conv[:i], add_generation_prompt=True)
        enc = tokenize_texts(tok, [examples[-1][0]], [examples[-1][1]])[0]
        a, b = enc["spans"][-1]
        assert tok.convert_ids_to_tokens(enc["input_ids"][b - 1]) == "<|user|>"  # one token, trained


def test_a_template_closing_nothing_without_header_tokens_is_still_refused() -> None:
    plain = GLM_LIKE.replace("<|user|>", "User:").replace("<|assistant|>", "Assistant:").replace(
        "<|system|>", "System:")
    with pytest.raises(UserError, match="writes nothing after an assistant turn"):
        conversation_examples(renderer(_tok(), plain), _conv(THREE), "assistant", "auto", "test")


NEMOTRON_LIKE = """{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- for m in messages -%}
{%- if m.role == 'assistant' -%}<|im_start|>assistant
{% if m.reasoning_content and loop.index0 > ns.last_user -%}<think>
{{ m.reasoning_content }}
</think>
{% else %}<think></think>{% endif -%}
{{ m.content or '' }}{% for c in m.tool_calls or [] %}
<tool_call>{{ c.function.name }}</tool_call>{% endfor %}<|im_end|>
{% else -%}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
<think>
{% endif -%}"""


def test_think_opening_prompt_trains_the_templates_own_reasoning_format() -> None:
    tok = _tok()
    render = renderer(tok, NEMOTRON_LIKE)
    trained = {}
    for name, raw in (("three", THREE), ("tools", TOOLS), ("reasoning", [
            {"role": "user", "content": "2+2?"}, {"role": "assistant", "reasoning_content": "Add.", "content": "4"},
            {"role": "user", "content": "3+3?"}, {"role": "assistant", "reasoning_content": "Add again.", "content": "6"}])):
        examples = conversation_examples(render, _conv(raw), "assistant", "auto", "test")
        trained[name] = [text[a:b] for text, spans in examples for a, b in spans]
        for text, [(a, _)] in examples:
            assert text[:a].endswith("<|im_start|>assistant\n<think>\n")  # the generation prompt is the context
    assert trained["three"] == ["\n</think>\nHello!<|im_end|>\n", "\n</think>\n4<|im_end|>\n",
                                "\n</think>\nYou are welcome.<|im_end|>\n"]
    assert trained["tools"] == ["\n</think>\n<tool_call>get_weather</tool_call><|im_end|>\n",
                                "\n</think>\nIt is 18 C.<|im_end|>\n"]
    assert trained["reasoning"] == ["Add.\n</think>\n4<|im_end|>\n", "Add again.\n</think>\n6<|im_end|>\n"]


INDENTED = """{% for message in messages %}
    {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}
{% endfor %}

{% if add_generation_prompt %}
    {{ '<|im_start|>assistant\\n' }}
{% endif %}"""


def test_a_template_laid_out_for_reading_is_named_as_whitespace_not_a_rewrite() -> None:
    """A template whose indentation and blank lines between tags are rendered into the text (as in the
    whitespace-laid-out template collections) is refused with that cause, not "rewrites earlier turns"; with the
    whitespace removed the same template trains each turn."""
    tok = _tok()
    for multi_turn in ("auto", "consistent"):
        with pytest.raises(UserError, match="only in whitespace") as e:
            conversation_examples(renderer(tok, INDENTED), _conv(THREE), "assistant", multi_turn, "test")
        assert "rewrite" not in str(e.value)
    compact = INDENTED.replace("    ", "").replace("\n{%", "{%").replace("%}\n", "%}")
    (text, spans), = conversation_examples(renderer(tok, compact), _conv(THREE), "assistant", "auto", "test")
    assert [text[a:b] for a, b in spans] == ["Hello!<|im_end|>\n", "4<|im_end|>\n", "You are welcome.<|im_end|>\n"]


def test_chat_template_kwargs_are_set_in_the_template_everyone_renders_with(tmp_path) -> None:  # noqa: ANN001
    """data.chat_template_kwargs: Qwen3 with `enable_thinking: false` puts the empty think block in the generation
    prompt (context, not trained); the variables are written into the tokenizer's template, so the saved tokenizer
    and every later apply_chat_template (eval, chat, TRL) render the same; applying twice changes nothing."""
    from tests.unit.test_data_families import _tokenizer, conversations
    from tunekit.data.templates import apply_chat_template_choice

    tok = _tokenizer("qwen3")
    template = apply_chat_template_choice(tok, "qwen3", True, {"enable_thinking": False})
    assert template == tok.chat_template and template.startswith("{%- set enable_thinking = false -%}\n")
    assert apply_chat_template_choice(tok, None, True, {"enable_thinking": False}) == template  # idempotent
    examples = conversation_examples(renderer(tok, template, "qwen3"), conversations()["three_turns"], "assistant",
                                     "auto", "test")
    assert [text[a:b] for text, spans in examples for a, b in spans] == [
        "Hello!<|im_end|>\n", "4<|im_end|>\n", "You are welcome.<|im_end|>\n"]
    for text, [(a, _)] in examples:
        assert text[:a].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    prompt = again.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_chat_template_kwargs_keep_a_tokenizers_other_named_templates() -> None:
    """A tokenizer with several named templates (Command-R: default, tool_use, rag): the variables go into the
    default one, which training renders with; the others are kept for the saved tokenizer, not dropped."""
    from tests.unit.test_data_families import _tokenizer
    from tunekit.data.templates import apply_chat_template_choice, load_template

    tok = _tokenizer("qwen3")
    tok.chat_template = {"default": load_template("qwen3"), "tool_use": "{{ messages | length }}"}
    template = apply_chat_template_choice(tok, None, True, {"enable_thinking": False})
    assert template.startswith("{%- set enable_thinking = false -%}")
    assert tok.chat_template == {"default": template, "tool_use": "{{ messages | length }}"}


def test_chat_template_kwargs_the_template_never_reads_are_refused() -> None:
    from tests.unit.test_data_families import _tokenizer
    from tunekit.data.templates import apply_chat_template_choice

    with pytest.raises(UserError, match=r"data.chat_template_kwargs.enable_thinking: the chat template never reads"):
        apply_chat_template_choice(_tokenizer("llama3.1"), "llama3.1", True, {"enable_thinking": False})
    with pytest.raises(UserError, match="Did you mean `enable_thinking`"):
        apply_chat_template_choice(_tokenizer("qwen3"), "qwen3", True, {"enable_thinkin": False})


def test_chat_template_kwargs_names_and_values_are_checked_in_the_recipe(tmp_path) -> None:  # noqa: ANN001
    from tests.conftest import RECIPES
    from tunekit.recipe.load import load_recipe

    base = (RECIPES / "quickstart.yaml").read_text()
    assert "\ndata:\n" in base
    ok = tmp_path / "ok.yaml"
    ok.write_text(base.replace("\ndata:\n", "\ndata:\n  chat_template_kwargs: {enable_thinking: false, effort: high, n: 2}\n"))
    assert load_recipe(ok).data.chat_template_kwargs == {"enable_thinking": False, "effort": "high", "n": 2}
    bad = tmp_path / "bad.yaml"
    bad.write_text(base.replace("\ndata:\n", "\ndata:\n  chat_template_kwargs: {enable-thinking: false}\n"))
    with pytest.raises(UserError) as e:
        load_recipe(bad)
    assert f"{bad}:" in str(e.value) and "data.chat_template_kwargs" in str(e.value)
    assert "not a template variable name" in str(e.value)


KIMI_LIKE = """{%- set ns = namespace(last=-1) -%}
{%- for m in messages -%}{%- if m.role == 'assistant' and not m.tool_calls -%}{%- set ns.last = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- for m in messages -%}
{%- if m.role == 'assistant' -%}<|im_assistant|>assistant<|im_middle|><think>
{{- m.reasoning_content if loop.index0 > ns.last and m.reasoning_content else '' }}</think>{{ m.content or '' }}
{%- for c in m.tool_calls or [] -%}<|tool_call_begin|>{{ c.id }}<|tool_call_argument_begin|>{{ c.function.arguments | tojson }}<|tool_call_end|>{%- endfor -%}<|im_end|>
{%- else -%}<|im_{{ 'user' if m.role == 'user' else 'system' }}|>{{ m.role }}<|im_middle|>{{ m.content }}<|im_end|>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}"""
REASONING = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "reasoning_content": "Add.", "content": "4"},
             {"role": "user", "content": "3+3?"}, {"role": "assistant", "reasoning_content": "Add again.", "content": "6"}]


@pytest.mark.parametrize("train_reasoning", [True, False])
def test_reasoning_goes_into_the_empty_think_block_of_the_latest_answer(train_reasoning: bool) -> None:
    """The template renders the answer it ends with as `<think></think>answer` (its reasoning dropped): each turn
    is its own example, trained as the model writes it after the generation prompt, reasoning inside the block;
    the context keeps earlier turns as the template renders history (empty blocks)."""
    tok = _tok()
    render = renderer(tok, KIMI_LIKE)
    examples = conversation_examples(render, _conv(REASONING), "assistant", "auto", "test",
                                     train_reasoning=train_reasoning)
    trained = [text[a:b] for text, spans in examples for a, b in spans]
    if train_reasoning:
        assert trained == ["<think>Add.</think>4<|im_end|>", "<think>Add again.</think>6<|im_end|>"]
    else:
        assert trained == ["</think>4<|im_end|>", "</think>6<|im_end|>"]
    for (text, [(a, _)]), i in zip(examples, (1, 3)):  # the context is the generation-prompt rendering
        context = render(_conv(REASONING)[:i], add_generation_prompt=True)
        assert text[:a] == context if train_reasoning else text[:a] == context + "<think>" + REASONING[i]["reasoning_content"]
    assert "<think></think>4<|im_end|>" in examples[1][0]  # history as the template renders it


def _agentic_trace() -> list[dict]:
    def call(k: int, city: str) -> dict:
        return {"id": f"functions.get_weather:{k}", "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": city}}}

    return [{"role": "user", "content": "Paris and Rome?"},
            {"role": "assistant", "reasoning_content": "Paris first.", "content": "", "tool_calls": [call(0, "Paris")]},
            {"role": "tool", "content": "18 C", "tool_call_id": "functions.get_weather:0"},
            {"role": "assistant", "reasoning_content": "Now Rome.", "content": "", "tool_calls": [call(1, "Rome")]},
            {"role": "tool", "content": "21 C", "tool_call_id": "functions.get_weather:1"},
            {"role": "assistant", "reasoning_content": "Both known.", "content": "18 and 21."}]


@pytest.mark.parametrize("train_reasoning", [True, False])
def test_final_answer_of_a_tool_calling_trace_is_written_after_the_calls_reasoning(train_reasoning: bool) -> None:
    """Kimi-K2-Thinking keeps the reasoning of the tool-call turns of the step under way (the model answers after
    it) but empties every think block once an answer ends the conversation: the final answer is trained after the
    prompt that keeps the calls' reasoning, with its own reasoning in its block (it was refused)."""
    render = renderer(_tok(), KIMI_LIKE)
    raw = _agentic_trace()
    examples = conversation_examples(render, _conv(raw), "assistant", "auto", "test", train_reasoning=train_reasoning)
    (text, [(a, b)]) = examples[-1]
    context = render(_conv(raw)[:5], add_generation_prompt=True)
    assert "<think>Paris first.</think>" in context and "<think>Now Rome.</think>" in context
    assert text[:a] == (context if train_reasoning else context + "<think>Both known.")
    assert text[a:b] == ("<think>Both known.</think>" if train_reasoning else "</think>") + "18 and 21.<|im_end|>"
    assert len(examples) == 3 and all(e[0].startswith(examples[0][0]) for e in examples)  # one trace, growing


def test_a_template_dropping_more_than_reasoning_from_earlier_turns_is_still_refused() -> None:
    """Only think blocks' contents may differ between the prompt and the conversation ending with the answer; a
    template that also rewrites the earlier turns' text is refused as before."""
    rewrites = KIMI_LIKE.replace("{{ m.content or '' }}", "{{ (m.content or '') if loop.index0 >= ns.last else '' }}")
    raw = _agentic_trace()
    raw[1]["content"] = "Let me check."
    with pytest.raises(UserError, match="does not render conversation prefixes consistently"):
        conversation_examples(renderer(_tok(), rewrites), _conv(raw), "assistant", "auto", "test")


def test_fill_reasoning_keeps_the_blocks_whitespace_and_applies_only_to_one_empty_block() -> None:
    from tunekit.data.turns import fill_reasoning

    m = {"role": "assistant", "reasoning_content": "R", "content": "A"}
    assert fill_reasoning("<think>\n\n</think>\n\nA<|im_end|>", m) == "<think>\nR\n</think>\n\nA<|im_end|>"
    assert fill_reasoning("<think></think>A", m) == "<think>R</think>A"
    assert fill_reasoning("<think>R</think>A", m) is None  # rendered already
    assert fill_reasoning("<think></think><think></think>A", m) is None  # ambiguous
    assert fill_reasoning("<think></think>A", {"role": "assistant", "content": "A"}) is None  # nothing to fill


def test_tool_call_ids_written_where_the_call_is_named_must_name_the_function() -> None:
    tok = _tok()
    render = renderer(tok, KIMI_LIKE)

    def calls(call_id: str) -> Conversation:
        return _conv([{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
                          "name": "get_weather", "arguments": {"city": "Paris"}}}]},
                      {"role": "tool", "content": "18 C", "tool_call_id": call_id},
                      {"role": "assistant", "content": "It is 18 C."}])

    with pytest.raises(UserError, match=r"writes the tool call's `id` \(`call00001`\).*`functions.get_weather:0`"):
        conversation_examples(render, calls("call00001"), "assistant", "auto", "test")
    examples = conversation_examples(render, calls("functions.get_weather:0"), "assistant", "auto", "test")
    trained = [text[a:b] for text, spans in examples for a, b in spans]
    assert trained[0] == ('<think></think><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>'
                          '{"city": "Paris"}<|tool_call_end|><|im_end|>')


V31_LIKE = """{%- if not thinking is defined -%}{%- set thinking = false -%}{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}<|im_user|>{{ m.content }}
{%- elif m.role == 'assistant' -%}<|im_assistant|></think>{{ m.content }}<|im_end|>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_assistant|>{{ '<think>' if thinking else '</think>' }}{%- endif -%}"""


def test_thinking_switch_and_the_templates_own_closing_tag() -> None:
    """A DeepSeek-V3.1-like template: non-thinking by default (the generation prompt closes the think block, so
    reasoning rows cannot be trained); with `data.chat_template_kwargs: {thinking: true}` the prompt opens it and
    each turn is trained in the template's own format, `R</think>answer` (no newlines: the closing tag the
    template writes before the answer), an empty reasoning as `</think>answer`."""
    from tunekit.data.templates import with_variables

    tok = _tok()
    with pytest.raises(UserError, match="does not render the assistant turn's `reasoning_content`"):
        conversation_examples(renderer(tok, V31_LIKE), _conv(REASONING), "assistant", "auto", "test")
    render = renderer(tok, with_variables(V31_LIKE, {"thinking": True}))
    trained = {name: [text[a:b] for text, spans in conversation_examples(render, _conv(raw), "assistant", "auto",
                                                                         "test") for a, b in spans]
               for name, raw in (("reasoning", REASONING), ("plain", THREE[1:]))}
    assert trained["reasoning"] == ["Add.</think>4<|im_end|>", "Add again.</think>6<|im_end|>"]
    assert trained["plain"] == ["</think>Hello!<|im_end|>", "</think>4<|im_end|>", "</think>You are welcome.<|im_end|>"]


GEMMA4_LIKE = """{%- for m in messages -%}
{%- set role = 'model' if m.role == 'assistant' else m.role -%}<|turn>{{ role }}
{% for c in m.tool_calls or [] %}<|tool_call>call:{{ c.function.name }}{}<tool_call|>{% endfor %}{{ m.content or '' }}<turn|>
{% endfor -%}
{%- if add_generation_prompt -%}<|turn>model
{% if not enable_thinking | default(false) %}<|channel>thought
<channel|>{% endif %}{%- endif -%}"""
NOTHINK_LIKE = """{%- for m in messages -%}<|im_start|>{{ m.role }}
{% if m.role == 'assistant' and m.reasoning_content %}<think>
{{ m.reasoning_content }}
</think>

{% endif %}{{ m.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
<think>

</think>

{% endif -%}"""


def test_turn_after_an_extra_block_at_the_end_of_the_generation_prompt() -> None:
    from tunekit.data.templates import with_variables

    tok = _tok()
    render = renderer(tok, GEMMA4_LIKE)
    examples = conversation_examples(render, _conv(THREE[1:]), "assistant", "auto", "test")
    assert [text[a:b] for text, spans in examples for a, b in spans] == [
        "Hello!<turn|>\n", "4<turn|>\n", "You are welcome.<turn|>\n"]
    for text, [(a, _)] in examples:
        assert text[:a].endswith("<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    calls = conversation_examples(render, _conv(TOOLS), "assistant", "auto", "test")
    # the common `<|` of `<|channel>` and `<|tool_call>` stays with the trained call: no split special token
    assert calls[0][0][calls[0][1][0][0]:] == "<|tool_call>call:get_weather{}<tool_call|><turn|>\n"
    thinking = conversation_examples(renderer(tok, with_variables(GEMMA4_LIKE, {"enable_thinking": True})),
                                     _conv(THREE[1:]), "assistant", "auto", "test")
    assert len(thinking) == 1  # no extra block: the prefixes render consistently, one example
    # reasoning rows under a prompt whose block closes an empty think: refused, never trained after the block
    with pytest.raises(UserError, match="does not render conversation prefixes consistently"):
        conversation_examples(renderer(tok, NOTHINK_LIKE), _conv(REASONING), "assistant", "auto", "test")


@pytest.mark.parametrize(("name", "dropped"), [("qwen3", False), ("deepseek-r1-distill", False), ("qwen2.5", True)])
def test_preference_answers_reasoning_the_template_drops_is_an_error_not_silently_lost(name: str,
                                                                                        dropped: bool) -> None:
    """A preference answer is scored as the model writes it after the prompt (`pair_tokens.pair_texts`). Qwen2.5's
    template never renders `reasoning_content`, so a chosen answer's reasoning would vanish from the pair: that is
    an error naming the field. Qwen3's renders it; DeepSeek-R1-Distill's strips it from rendered turns, but the
    model writes it after the prompt's `<think>`, so the pair keeps it (with TRL's own rendering it was lost).
    Reasoning inline in `content` is kept by all three."""
    from tests.unit.test_data_families import _tokenizer
    from tunekit.data.pair_tokens import pair_texts
    from tunekit.data.preference import check_renders, preference_row
    from tunekit.data.schema import DatasetSpec

    tok = _tokenizer(name)
    row = preference_row({"prompt": "2+2?", "chosen": [{"role": "assistant", "reasoning_content": "Add two and two.",
                                                          "content": "4"}],
                          "rejected": [{"role": "assistant", "content": "5"}]},
                         DatasetSpec(path="x.jsonl", format="preference"), "x.jsonl:1")
    render = renderer(tok, tok.chat_template, name)
    if dropped:
        with pytest.raises(UserError, match=r"x.jsonl:1: .* drops the reasoning of `chosen`"):
            check_renders(render, row, "x.jsonl:1")
    else:
        check_renders(render, row, "x.jsonl:1")
        assert "Add two and two." in pair_texts(render, row["prompt"], row["chosen"], "x.jsonl:1")[1]
    inline = {**row, "chosen": [{"role": "assistant", "content": "<think>\nAdd two and two.\n</think>\n\n4"}]}
    check_renders(render, inline, "x.jsonl:1")
    assert "Add two and two." in pair_texts(render, inline["prompt"], inline["chosen"], "x.jsonl:1")[1]
