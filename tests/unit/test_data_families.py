"""The shipped real templates of model families, token by token, on a system + 3-turn conversation, a tool-call
conversation and a reasoning conversation: the trained tokens are exactly each assistant turn's text (tool calls
included) and its end-of-turn marker, written out here by hand per family; the context before each trained turn
is exactly transformers' `apply_chat_template(..., add_generation_prompt=True)` of the conversation up to it.

The shipped tiny tokenizer is used with the family's markers added as special tokens (as the real tokenizers
have them), so a marker is one token and the token boundaries are the family's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.data.masking import conversation_examples, tokenize_texts
from tunekit.data.messages import Conversation, merge_system_into_first_user, message
from tunekit.data.templates import TEMPLATE_SOURCES, load_template, renderer
from tunekit.model.builtin import TOKENIZER_DIR

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
DS_CALL = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
           '{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
DS_SPECIAL = ["<｜User｜>", "<｜Assistant｜>", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>",
              "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁output▁begin｜>",
              "<｜tool▁output▁end｜>", "<｜tool▁outputs▁end｜>"]
IM = ["<|im_start|>", "<|im_end|>"]
# name: bos, eos, extra special tokens, the trained text of an answer turn (A: content, R: reasoning, last: the
# turn ends the example), of the tool-call turn (None: no tool support), reasoning support, system handling.
FAMILIES: dict[str, dict] = {
    "qwen2.5": dict(bos=None, eos="<|im_end|>", special=IM, answer=lambda a, r, last: f"{a}<|im_end|>\n",
                    call=f"<tool_call>\n{CALL}\n</tool_call><|im_end|>\n"),
    "qwen3": dict(bos=None, eos="<|im_end|>", special=IM,
                  answer=lambda a, r, last: f"<think>\n{r}\n</think>\n\n{a}<|im_end|>\n" if r else
                  f"<think>\n\n</think>\n\n{a}<|im_end|>\n",
                  call=f"<think>\n\n</think>\n\n<tool_call>\n{CALL}\n</tool_call><|im_end|>\n", reasoning=True),
    "llama3.1": dict(bos="<|begin_of_text|>", eos="<|eot_id|>",
                     special=["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>"],
                     answer=lambda a, r, last: f"{a}<|eot_id|>",
                     call='{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'),
    "mistral-v0.3": dict(bos="<s>", eos="</s>", special=["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                                                          "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"],
                         answer=lambda a, r, last: f" {a}</s>",
                         call='[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, '
                              '"id": "call00001"}]</s>'),
    "gemma2": dict(bos="<bos>", eos="<eos>", special=["<start_of_turn>", "<end_of_turn>"], merge_system=True,
                   answer=lambda a, r, last: f"{a}<end_of_turn>\n"),
    "gemma3": dict(bos="<bos>", eos="<eos>", special=["<start_of_turn>", "<end_of_turn>"],
                   answer=lambda a, r, last: f"{a}<end_of_turn>\n"),
    "phi3": dict(bos="<s>", eos="<|endoftext|>", special=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
                 answer=lambda a, r, last: f"{a}<|end|>\n" + ("<|endoftext|>" if last else "")),
    "phi3.5": dict(bos="<s>", eos="<|endoftext|>", special=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
                   answer=lambda a, r, last: f"{a}<|end|>\n" + ("<|endoftext|>" if last else "")),
    "phi4": dict(bos=None, eos="<|im_end|>", special=[*IM, "<|im_sep|>"], answer=lambda a, r, last: f"{a}<|im_end|>"),
    "deepseek-v3": dict(bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", special=DS_SPECIAL, reasoning=True,
                        answer=lambda a, r, last: f"{r}\n</think>\n\n{a}<｜end▁of▁sentence｜>",
                        call=f"\n</think>\n\n{DS_CALL}<｜end▁of▁sentence｜>", schemas=False,
                        # after tool results the template writes no generation prompt: the answer follows directly
                        after_tool=lambda a: f"{a}<｜end▁of▁sentence｜>"),
    "deepseek-r1-distill": dict(bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", special=DS_SPECIAL,
                                reasoning=True, answer=lambda a, r, last: f"{r}\n</think>\n\n{a}<｜end▁of▁sentence｜>"),
}
FAMILIES["llama3.2"] = FAMILIES["llama3.1"]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
THREE_TURNS = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4"),
               ("user", "Thanks"), ("assistant", "You are welcome.")]


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    fam = FAMILIES[name]
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tokens = {"eos_token": fam["eos"], "additional_special_tokens": [*fam["special"], "<think>", "</think>"]}
    if fam["bos"]:
        tokens["bos_token"] = fam["bos"]
    tok.add_special_tokens(tokens)
    tok.chat_template = load_template(name)
    return tok


def _conv(raw: list[dict], tools: list | None = None) -> Conversation:
    return Conversation.of([message(m, f"messages[{k}]", "test") for k, m in enumerate(raw)], tools)


def conversations() -> dict[str, Conversation]:
    calls = [{"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    return {
        "three_turns": _conv([{"role": r, "content": c} for r, c in THREE_TURNS]),
        "tools": _conv([{"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "content": None, "tool_calls": calls},
                        {"role": "tool", "content": "18 C", "tool_call_id": "call00001", "name": "get_weather"},
                        {"role": "assistant", "content": "It is 18 C."}], [TOOL]),
        "reasoning": _conv([{"role": "user", "content": "2+2?"},
                            {"role": "assistant", "reasoning_content": "Add two and two.", "content": "4"},
                            {"role": "user", "content": "3+3?"},
                            {"role": "assistant", "reasoning_content": "Add three and three.", "content": "6"}]),
    }


def _expected(fam: dict, conv: list[dict], i: int, last: bool) -> str:
    m = conv[i]
    if m.get("tool_calls"):
        return fam["call"]
    if conv[i - 1]["role"] == "tool" and "after_tool" in fam:
        return fam["after_tool"](m["content"])
    return fam["answer"](m["content"], m.get("reasoning_content", ""), last)


def _reference(messages: list[dict], fam: dict) -> list[dict]:
    """The messages as given to transformers: DeepSeek's templates concatenate arguments as a JSON string (the
    OpenAI form); transformers copies the messages, so tunekit's string-concatenable object is not kept."""
    if fam.get("schemas") is not False:
        return list(messages)
    return [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                                 for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]


def _cases() -> list[tuple[str, str]]:
    out = []
    for name, fam in FAMILIES.items():
        out.append((name, "three_turns"))
        if fam.get("call"):
            out.append((name, "tools"))
        if fam.get("reasoning"):
            out.append((name, "reasoning"))
    return out


@pytest.mark.parametrize(("name", "kind"), _cases())
def test_family_template_trains_exactly_each_assistant_turn(name: str, kind: str) -> None:
    fam = FAMILIES[name]
    tok = _tokenizer(name)
    conv = conversations()[kind]
    if fam.get("merge_system"):
        conv = merge_system_into_first_user(conv)
    if fam.get("schemas") is False:  # renders tool calls but not `tools` (schemas go into the system prompt)
        conv = Conversation.of(list(conv))
    examples = conversation_examples(renderer(tok, tok.chat_template, name), conv, "assistant", "auto", "test")
    encs = tokenize_texts(tok, [t for t, _ in examples], [s for _, s in examples])
    turns = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
    seen = []
    for (text, spans), enc in zip(examples, encs):
        ids = enc["input_ids"]
        trained_ids = [t for a, b in enc["spans"] for t in ids[a:b]]
        # each span is one assistant turn, in order; the example ends with the last one
        covered = turns[len(seen) : len(seen) + len(spans)] if len(examples) == 1 else [turns[len(seen)]]
        want = [_expected(fam, conv, i, i == covered[-1]) for i in covered]
        assert [text[a:b] for a, b in spans] == want, (name, kind)
        assert trained_ids == [t for w in want for t in tok(w, add_special_tokens=False)["input_ids"]], (name, kind)
        for (a, _), i in zip(spans, covered):
            context = tok.apply_chat_template(_reference(conv[:i], fam), tools=conv.tools,
                                              add_generation_prompt=True, tokenize=False)
            assert text[:a] == context, (name, kind, i)
        assert text.endswith(want[-1])
        seen += covered
    assert seen == turns  # every assistant turn trained once; nothing else (user, system, tool) carries loss


@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in ("llama3.2",)])
def test_consistent_families_train_the_whole_conversation_once(name: str) -> None:
    """Templates rendering prefixes consistently (Phi-3's document-end EOS included) give one example whose text
    is transformers' rendering of the whole conversation; the others split per turn (data.multi_turn: auto)."""
    tok = _tokenizer(name)
    conv = conversations()["three_turns"]
    if FAMILIES[name].get("merge_system"):
        conv = merge_system_into_first_user(conv)
    examples = conversation_examples(renderer(tok, tok.chat_template, name), conv, "assistant", "auto", "test")
    per_turn = {"qwen3", "mistral-v0.3", "deepseek-v3", "deepseek-r1-distill"}
    assert len(examples) == (3 if name in per_turn else 1)
    if name not in per_turn:
        assert examples[0][0] == tok.apply_chat_template(list(conv), tokenize=False)


@pytest.mark.parametrize("name", ["qwen3", "deepseek-v3", "deepseek-r1-distill"])
def test_train_reasoning_false_keeps_reasoning_as_context_only(name: str) -> None:
    tok = _tokenizer(name)
    conv = conversations()["reasoning"]
    render = renderer(tok, tok.chat_template, name)
    kept = conversation_examples(render, conv, "assistant", "auto", "test", train_reasoning=False)
    full = conversation_examples(render, conv, "assistant", "auto", "test")
    assert [t for t, _ in kept] == [t for t, _ in full]
    for (text, spans), m in zip(kept, [conv[1], conv[3]]):
        trained = "".join(text[a:b] for a, b in spans)
        assert m["reasoning_content"] not in trained and m["reasoning_content"] in text
        assert trained.startswith("\n</think>\n\n") and m["content"] in trained


def test_inline_think_blocks_are_read_as_reasoning() -> None:
    tok = _tokenizer("deepseek-r1-distill")
    conv = _conv([{"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "<think>\nAdd two and two.\n</think>\n\n4"}])
    (text, [(a, b)]), = conversation_examples(renderer(tok, tok.chat_template), conv, "assistant", "auto", "test")
    assert text[a:b] == "Add two and two.\n</think>\n\n4<｜end▁of▁sentence｜>"
    assert text[:a].endswith("<｜Assistant｜><think>\n")


def test_every_family_template_has_a_recorded_source() -> None:
    assert set(FAMILIES) <= set(TEMPLATE_SOURCES)


GENERATION_MARKED = {"gemma2": "gemma_training.jinja", "phi3": "phi3_training.jinja",
                     "qwen2.5": "qwen2_5_training.jinja"}
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "templates"


@pytest.mark.parametrize(("name", "kind"), [(n, k) for n, k in _cases() if n in GENERATION_MARKED])
def test_mask_equals_transformers_assistant_tokens_mask(name: str, kind: str) -> None:
    """TRL's `{% generation %}` variant of the family template renders the same text; transformers' assistant mask
    from it equals tunekit's mask from the original template."""
    tok = _tokenizer(name)
    conv = conversations()[kind]
    if FAMILIES[name].get("merge_system"):
        conv = merge_system_into_first_user(conv)
    (text, spans), = conversation_examples(renderer(tok, tok.chat_template, name), conv, "assistant", "auto", "test")
    enc = tokenize_texts(tok, [text], [spans])[0]
    ours = [0] * len(enc["input_ids"])
    for a, b in enc["spans"]:
        ours[a:b] = [1] * (b - a)
    marked = (FIXTURES / GENERATION_MARKED[name]).read_text(encoding="utf-8")
    ref = tok.apply_chat_template(list(conv), tools=conv.tools, chat_template=marked, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    assert ref["input_ids"] == enc["input_ids"]
    differ = [k for k, (r, o) in enumerate(zip(ref["assistant_masks"], ours)) if r != o]
    if name == "qwen2.5":
        # TRL's variant opens the generation block before the "\n" that ends `<|im_start|>assistant\n`, which the
        # original template writes as part of its generation prompt (the model never generates it): tunekit
        # leaves it in the prompt. Every other token agrees.
        assert differ and all(ours[k] == 0 and ours[k + 1] == 1 and tok.decode(enc["input_ids"][k]) == "\n"
                              for k in differ)
    else:
        assert not differ
