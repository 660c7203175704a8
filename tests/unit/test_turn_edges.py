"""The edges of a trained turn: a conversation that opens with an assistant turn, an empty assistant turn, and the
boundary between context and trained text (no character of the rendering lost, whatever the tokenizer merges).

Each test here failed before the fix it covers: an opening assistant turn had "" as its context (Qwen2.5's default
system block, Llama 3.1's date block and the header were trained as the answer); an empty trained turn taught only
the end of turn, silently; a token merging the context's last space with the answer's digits was context (the answer
carried no loss); Gemma 4's `<|` of `<|tool_call>` was cut from the example with a tokenizer where it is no special
token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_data_families import _tokenizer
from tests.unit.test_template_fields import GEMMA4_LIKE
from tunekit.data.build import build_datasets
from tunekit.data.masking import conversation_examples, token_spans, tokenize_texts
from tunekit.data.messages import Conversation, RowError, message
from tunekit.data.pair_tokens import pair_ids, pair_texts
from tunekit.data.preference import preference_row, unpaired_row
from tunekit.data.schema import DataConfig, DatasetSpec
from tunekit.data.templates import load_template, renderer
from tunekit.errors import UserError
from tunekit.model.builtin import TOKENIZER_DIR


def _plain():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _conv(raw: list[dict], tools: list | None = None) -> Conversation:
    return Conversation.of([message(m, f"messages[{k}]", "test") for k, m in enumerate(raw)], tools)


def _examples(render, raw: list[dict], **kw) -> list[tuple[str, list[tuple[int, int]]]]:
    return conversation_examples(render, _conv(raw), kw.get("train_on", "assistant"), "auto", "test")


def _trained_tokens(tok, text: str, spans: list[tuple[int, int]]) -> list[str]:
    enc = tokenize_texts(tok, [text], [spans])[0]
    assert tok.decode(enc["input_ids"]) == text  # every token of the rendering kept
    return [tok.decode(enc["input_ids"][a:b]) for a, b in enc["spans"]]


GREETING = [{"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
SYSTEM = {"role": "system", "content": "Be brief."}
# template -> (end of turn, what the context of the opening turn must hold)
OPENING = {
    "qwen2.5": ("<|im_end|>\n", "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                "assistant.<|im_end|>\n<|im_start|>assistant\n"),
    "llama3.1": ("<|eot_id|>", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
                 "Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>assistant"
                 "<|end_header_id|>\n\n"),
    "phi4": ("<|im_end|>", "<|im_start|>assistant<|im_sep|>"),
    "qwen3": ("<|im_end|>\n", "<|im_start|>assistant\n"),
}


@pytest.mark.parametrize("system", [False, True], ids=["first", "after-system"])
@pytest.mark.parametrize("name", sorted(OPENING))
def test_an_opening_assistant_turn_trains_only_its_answer(name: str, system: bool) -> None:
    """ShareGPT/Vicuna rows that open with a `gpt` greeting: the template's preamble and header before it are
    context (the empty conversation with the generation prompt, or the rendered turn up to its generation prompt
    where the template cannot render an empty conversation), only the greeting and its end of turn are trained."""
    tok = _tokenizer(name)
    render = renderer(tok, tok.chat_template, name)
    raw = [SYSTEM, *GREETING] if system else GREETING
    [(text, spans)] = _examples(render, raw)
    eot = OPENING[name][0]
    last = ("<think>\n\n</think>\n\n" if name == "qwen3" else "") + "4"  # Qwen3: after a user's question only
    assert [text[a:b] for a, b in spans] == [f"Hello! How can I help?{eot}", f"{last}{eot}"]
    if not system:
        assert text[: spans[0][0]] == OPENING[name][1]
    assert _trained_tokens(tok, text, spans) == [f"Hello! How can I help?{eot}", f"{last}{eot}"]


def test_a_sharegpt_row_opening_with_a_gpt_greeting_builds_with_the_header_as_context(tmp_path: Path) -> None:
    tok = _plain()
    rows = tmp_path / "vicuna.jsonl"
    rows.write_text(json.dumps({"conversations": [{"from": "gpt", "value": "Hello! How can I help you today?"},
                                                  {"from": "human", "value": "Summarize Hamlet."},
                                                  {"from": "gpt", "value": "A prince avenges his father."}]}) + "\n")
    cfg = DataConfig(train=[{"path": str(rows), "format": "sharegpt"}], chat_template="qwen2.5",
                     cache_dir=str(tmp_path / "cache"))
    train, _, _ = build_datasets(cfg, tok, seed=0)
    row = train[0]
    trained = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])
    assert trained == "Hello! How can I help you today?<|im_end|>\nA prince avenges his father.<|im_end|>\n"


def test_an_opening_assistant_turn_without_a_consistent_context_is_an_error_with_its_fixes() -> None:
    """Gemma 4 (without a system message) writes a generation prompt the opening turn does not follow, and cannot
    render an empty conversation: an error naming the fixes; marked `train: false`, the greeting is context."""
    render = renderer(_plain(), GEMMA4_LIKE, "gemma4-like")
    with pytest.raises(UserError, match=r"test: the conversation opens with an assistant turn.*Remove the opening "
                                        r"assistant turn.*`train: false`"):
        _examples(render, GREETING)
    [(text, spans)] = _examples(render, [{**GREETING[0], "train": False}, *GREETING[1:]])
    assert [text[a:b] for a, b in spans] == ["4<turn|>\n"]
    assert "Hello! How can I help?" in text[: spans[0][0]]


def test_a_template_putting_the_system_text_in_the_first_user_turn_refuses_an_opening_greeting() -> None:
    """tunekit's `gemma` writes the system text into the first turn, here the assistant's: it would be trained as
    part of the greeting. `mistral` drops it. Both are errors; marked `train: false`, gemma's is context."""
    tok = _plain()
    for name in ("gemma", "mistral"):
        with pytest.raises(UserError, match=r"does not render the system message before the 1st assistant turn"):
            _examples(renderer(tok, load_template(name), name), [SYSTEM, *GREETING])
    render = renderer(tok, load_template("gemma"), "gemma")
    [(text, spans)] = _examples(render, [SYSTEM, {**GREETING[0], "train": False}, *GREETING[1:]])
    assert "Be brief." in text[: spans[0][0]] and [text[a:b] for a, b in spans] == ["4<end_of_turn>\n"]


@pytest.mark.parametrize("content", ["", " \n", None])
def test_an_empty_trained_assistant_turn_is_an_error_naming_the_turn(content: str | None) -> None:
    render = renderer(_plain(), load_template("chatml"), "chatml")
    raw = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
           {"role": "user", "content": "And?"}, {"role": "assistant", "content": content or ""}]
    for train_on in ("assistant", "last_assistant", "all"):
        with pytest.raises(UserError, match=r"test: the 2nd assistant turn \(the answer to `And\?`\) is empty.*"
                                            r"Remove the row \(or that turn\).*`train: false`"):
            _examples(render, raw, train_on=train_on)
    # context, not trained: fine; a tool call (or reasoning) without text is not empty
    assert len(_examples(render, [*raw[:3], {**raw[3], "train": False}, {"role": "user", "content": "?"},
                                  {"role": "assistant", "content": "Done."}])) == 1
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    qwen = renderer(_tokenizer("qwen2.5"), load_template("qwen2.5"), "qwen2.5")
    assert _examples(qwen, [raw[0], {"role": "assistant", "content": content, "tool_calls": [call]}])


def test_an_empty_alpaca_output_is_an_error_naming_the_row(tmp_path: Path) -> None:
    rows = tmp_path / "a.jsonl"
    rows.write_text(json.dumps({"instruction": "What is 6*7?", "input": "", "output": ""}) + "\n")
    cfg = DataConfig(train=[{"path": str(rows), "format": "alpaca"}], chat_template="chatml",
                     cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"a.jsonl: row 1 \(line 1\): the 1st assistant turn \(the answer to "
                                        r"`What is 6\*7\?`\) is empty \(no text: an empty `content`, alpaca `output`"):
        build_datasets(cfg, _plain(), seed=0)


def test_preference_answers_with_an_empty_assistant_turn_are_refused_like_empty_strings() -> None:
    spec = DatasetSpec(path="p.jsonl", format="preference")
    with pytest.raises(RowError, match=r"`chosen\[0\]` is an empty assistant turn"):
        preference_row({"prompt": "2+2?", "chosen": [{"role": "assistant", "content": " "}], "rejected": "5"},
                       spec, "p.jsonl:1")
    with pytest.raises(RowError, match=r"`completion\[0\]` is an empty assistant turn"):
        unpaired_row({"prompt": "2+2?", "completion": [{"role": "assistant", "content": ""}], "label": False},
                     DatasetSpec(path="k.jsonl", format="unpaired_preference"), "k.jsonl:1")


def test_whole_conversations_opening_with_a_greeting_are_a_prompt_and_two_answers() -> None:
    chosen, rejected = GREETING, [*GREETING[:2], {"role": "assistant", "content": "5"}]
    row = preference_row({"chosen": chosen, "rejected": rejected}, DatasetSpec(path="p.jsonl", format="preference"),
                         "p.jsonl:1")
    assert row["prompt"] == GREETING[:2] and row["chosen"] == GREETING[2:] and row["rejected"] == rejected[2:]
    # the greeting is context of the pair (the prompt, with Qwen2.5's default system block before it)
    render = renderer(_tokenizer("qwen2.5"), load_template("qwen2.5"), "qwen2.5")
    prompt, answer = pair_texts(render, row["prompt"], row["chosen"], "test")
    assert prompt.startswith("<|im_start|>system\nYou are Qwen") and "Hello! How can I help?" in prompt
    assert answer == "4<|im_end|>\n"


# A Vicuna-like template whose generation prompt ends with a space: `ASSISTANT: ` + `20` is tokenized by the builtin
# tokenizer as `ASSISTANT`, `:`, `Ġ20`, a token that straddles the boundary between context and answer.
SPACE_PROMPT = ("{% for m in messages %}{% if m.role == 'user' %}{{ 'USER: ' + m.content + '\n' }}{% else %}"
                "{{ 'ASSISTANT: ' + m.content + eos_token }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}")


def test_a_token_straddling_the_start_of_the_answer_is_trained_in_sft_as_in_the_pairs() -> None:
    tok = _plain()
    render = renderer(tok, SPACE_PROMPT)
    raw = [{"role": "user", "content": "What is 4 times 5?"}, {"role": "assistant", "content": "20"}]
    [(text, spans)] = _examples(render, raw)
    assert text[slice(*spans[0])] == "20<|im_end|>"
    full = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    straddling = [k for k, (a, b) in enumerate(full["offset_mapping"]) if a < spans[0][0] < b]
    assert straddling, "the test needs a merge across the boundary"
    enc = tokenize_texts(tok, [text], [spans])[0]
    assert enc["spans"] == token_spans(full["offset_mapping"], spans) == [(straddling[0], len(full["input_ids"]))]
    assert _trained_tokens(tok, text, spans) == [" 20<|im_end|>"]  # with the context's space it holds
    prompt, completion = pair_texts(render, raw[:1], raw[1:], "test")
    assert pair_ids(tok, prompt, completion)[1] == enc["input_ids"][slice(*enc["spans"][0])]  # the pair's answer


def test_gemma4_tool_call_keeps_its_opening_characters_with_a_tokenizer_where_they_are_not_special() -> None:
    """`<|channel>` (the prompt's empty thought channel) and `<|tool_call>` share `<|`: the shared header ends where
    the turn's own text begins, so the call keeps it; the example is the prompt followed by the rendered call."""
    tok = _plain()
    render = renderer(tok, GEMMA4_LIKE)
    raw = [{"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
               "name": "get_weather", "arguments": {"city": "Paris"}}}]},
           {"role": "tool", "content": "18 C"}, {"role": "assistant", "content": "It is 18 C."}]
    examples = _examples(render, raw)
    prompt = render(raw[:1], add_generation_prompt=True)
    call = "<|tool_call>call:get_weather{}<tool_call|><turn|>\n"
    assert examples[0][0] == prompt + call and examples[0][1] == [(len(prompt), len(prompt + call))]
    assert _trained_tokens(tok, *examples[0]) == [call]
    assert pair_texts(render, raw[:1], raw[1:2], "test") == (prompt, call)
