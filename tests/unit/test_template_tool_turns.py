"""Tool-calling turns with the real templates of model families.

- An assistant turn with text and tool calls (OpenAI exports, agent traces: "I will check the weather." + a call):
  Llama 3.1's and Mistral v0.3's templates have no place for the text and drop it. It was silently left out of
  training (only the call was trained); it is now an error naming the row and the fixes, trained or in the
  context, in SFT rows and in preference prompts and answers, unless `data.drop_text_beside_tool_calls` says to
  leave it out.
- gpt-oss (harmony, TRL's copy of the template in tests/fixtures/templates/gptoss.jinja): the analysis of a tool
  call turn is kept in the prompt while the step is under way, and dropped from the rendering once a final answer
  follows. Traces with reasoning on the call turn were refused ("does not render conversation prefixes
  consistently"); each turn is now trained as the model writes it at inference, with its own reasoning, after the
  prompt that holds the calls' analysis.
- A template's own error is reported with a hint that fits it (Mistral's 9-character call ids, Llama 3.1's one
  call per turn, DeepSeek's answer after tool results), not "choose a template that renders tool calls".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.data.build import build_datasets
from tunekit.data.masking import conversation_examples
from tunekit.data.messages import Conversation, message
from tunekit.data.schema import DataConfig
from tunekit.data.templates import load_template, renderer
from tunekit.errors import UserError
from tunekit.model.builtin import TOKENIZER_DIR

GPTOSS = Path(__file__).resolve().parent.parent / "fixtures" / "templates" / "gptoss.jinja"
HARMONY = ["<|start|>", "<|message|>", "<|end|>", "<|return|>", "<|channel|>", "<|call|>"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def _call(city: str, call_id: str = "abc123XYZ") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


# OpenAI shape: text and a call in one assistant turn, the result, the answer (/work/probe-tools.md finding 1)
TEXT_AND_CALL = [{"role": "user", "content": "Weather in Paris?"},
                 {"role": "assistant", "content": "PREAMBLE I will check the weather.", "tool_calls": [_call("Paris")]},
                 {"role": "tool", "tool_call_id": "abc123XYZ", "name": "get_weather", "content": "18 C"},
                 {"role": "assistant", "content": "It is 18 C."}]


@pytest.fixture()
def tok():
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    t.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>", "additional_special_tokens": HARMONY})
    return t


def _build(tok, tmp_path: Path, rows: list[dict], template: str, fmt: str = "messages", **options):  # noqa: ANN001, ANN202
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(train=[{"path": str(data), "format": fmt}], chat_template=template,
                     cache_dir=str(tmp_path / "cache"), **options)
    return build_datasets(cfg, tok, seed=0)[0]


def _trained(tok, row: dict) -> list[str]:  # noqa: ANN001
    """The trained runs of tokens of an example, decoded one by one."""
    runs, run = [], []
    for t, lab in zip(row["input_ids"], row["labels"]):
        if lab != -100:
            run.append(t)
        elif run:
            runs, run = [*runs, tok.decode(run)], []
    return [*runs, tok.decode(run)] if run else runs


def _conv(raw: list[dict], tools: list | None = None) -> Conversation:
    return Conversation.of([message(m, f"messages[{k}]", "test") for k, m in enumerate(raw)], tools)


# ------------------------------------------------------------------------------------ text beside tool calls


@pytest.mark.parametrize("name", ["llama3.1", "mistral-v0.3"])
@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
def test_text_beside_tool_calls_a_template_drops_is_an_error_naming_the_row(name: str, train_on: str, tok,  # noqa: ANN001
                                                                           tmp_path: Path) -> None:
    """The call turn's text was missing from the trained text (and from the context, with last_assistant), with no
    error; qwen2.5 renders it and trains it."""
    rows = [{"messages": TEXT_AND_CALL, "tools": TOOLS}]
    with pytest.raises(UserError, match=r"d.jsonl: row 1 .*`PREAMBLE I will check the weather.`.*no place for text "
                                        r"beside tool calls.*own assistant turn.*qwen2.5.*drop_text_beside_tool_calls"):
        _build(tok, tmp_path, rows, name, train_on=train_on)
    text = tok.decode(_build(tok, tmp_path, rows, "qwen2.5", train_on=train_on)[0]["input_ids"])
    assert "PREAMBLE I will check the weather." in text


@pytest.mark.parametrize("name", ["llama3.1", "mistral-v0.3", "qwen2.5"])
def test_drop_text_beside_tool_calls_leaves_the_text_out_knowingly(name: str, tok, tmp_path: Path) -> None:  # noqa: ANN001
    """With the option the row trains its calls and answers without the text, whatever the template."""
    examples = _build(tok, tmp_path, [{"messages": TEXT_AND_CALL, "tools": TOOLS}], name,
                      drop_text_beside_tool_calls=True)
    texts = [tok.decode(r["input_ids"]) for r in examples]
    trained = [t for r in examples for t in _trained(tok, r)]
    assert not any("PREAMBLE" in t for t in texts)
    assert any("get_weather" in t for t in trained) and any("It is 18 C." in t for t in trained)


def test_preference_prompts_and_answers_with_text_beside_tool_calls_the_template_drops_are_errors() -> None:
    from transformers import AutoTokenizer

    from tunekit.data.preference import check_renders, preference_row
    from tunekit.data.schema import DatasetSpec

    t = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    spec = DatasetSpec(path="p.jsonl", format="preference")
    in_prompt = preference_row({"prompt": TEXT_AND_CALL[:3], "chosen": "It is 18 C.", "rejected": "No idea."}, spec,
                               "p.jsonl:1")
    in_answer = preference_row({"prompt": TEXT_AND_CALL[:1], "chosen": TEXT_AND_CALL[1:], "rejected": "No idea."},
                               spec, "p.jsonl:2")
    for row, where in ((in_prompt, "p.jsonl:1"), (in_answer, "p.jsonl:2")):
        with pytest.raises(UserError, match=rf"{where}: .*`PREAMBLE I will check the weather.`.*no place for text "
                                            "beside tool calls"):
            check_renders(renderer(t, load_template("llama3.1"), "llama3.1"), row, where)
        check_renders(renderer(t, load_template("qwen2.5"), "qwen2.5"), row, where)


def test_preference_data_is_built_with_the_text_left_out_only_when_asked(tok, tmp_path: Path) -> None:  # noqa: ANN001
    rows = [{"prompt": TEXT_AND_CALL[:3], "chosen": "It is 18 C.", "rejected": "No idea.", "tools": TOOLS},
            {"prompt": TEXT_AND_CALL[:1], "chosen": TEXT_AND_CALL[1:], "rejected": "No idea.", "tools": TOOLS}]
    with pytest.raises(UserError, match=r"d.jsonl: row 1 .*no place for text beside tool calls"):
        _build(tok, tmp_path, rows, "llama3.1", fmt="preference")
    built = _build(tok, tmp_path, rows, "llama3.1", fmt="preference", drop_text_beside_tool_calls=True)
    assert len(built) == 2 and "PREAMBLE" not in json.dumps(list(built))
    assert any(m.get("tool_calls") for r in built for m in [*r["prompt"], *r["chosen"]])


# -------------------------------------------------------------------------------- gpt-oss (harmony) traces


def _gptoss_trace(final_reasoning: bool, steps: int = 1) -> list[dict]:
    raw: list[dict] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    for k, city in enumerate(["Paris", "Rome"][:steps]):
        raw += [{"role": "assistant", "content": "", "reasoning_content": f"REASON{k + 1} Check {city}.",
                 "tool_calls": [_call(city, f"call_{k}")]},
                {"role": "tool", "tool_call_id": f"call_{k}", "name": "get_weather", "content": f"{18 + k} C"}]
    final = {"role": "assistant", "content": "FINAL It is mild."}
    return [*raw, {**final, "reasoning_content": "REASONF Both known."} if final_reasoning else final]


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("final_reasoning", [True, False])
def test_gptoss_tool_traces_with_reasoning_train_what_the_model_sees_at_inference(steps: int, final_reasoning: bool,
                                                                                  tok) -> None:  # noqa: ANN001
    """One example per assistant turn: each call turn trained with its own analysis; the final answer trained after
    the prompt the template renders while the step is under way (the calls' analysis kept), with its own analysis
    when it has one. It was refused as "does not render conversation prefixes consistently"."""
    render = renderer(tok, GPTOSS.read_text(), "gptoss")
    raw = _gptoss_trace(final_reasoning, steps)
    conv = _conv(raw, TOOLS)
    examples = conversation_examples(render, conv, "assistant", "auto", "test")
    assert len(examples) == steps + 1
    for (text, [(a, b)]), i in zip(examples, range(1, len(raw), 2)):
        assert text[:a] == render(conv[:i], add_generation_prompt=True, tools=TOOLS)  # the inference prompt
        assert b == len(text)
        trained = text[a:]
        if i < len(raw) - 1:  # a call turn: its analysis, then the call
            assert trained == (f"<|channel|>analysis<|message|>{raw[i]['reasoning_content']}<|end|><|start|>assistant "
                               'to=functions.get_weather<|channel|>commentary json<|message|>{"city": '
                               f'"{raw[i]["tool_calls"][0]["function"]["arguments"]["city"]}"}}<|call|>')
        else:
            analysis = "<|channel|>analysis<|message|>REASONF Both known.<|end|><|start|>assistant" if final_reasoning else ""
            assert trained == f"{analysis}<|channel|>final<|message|>FINAL It is mild.<|return|>"
            assert all(f"REASON{k + 1}" in text[:a] for k in range(steps))  # the calls' analysis is context
    # the same through the data stage; data.train_reasoning: false leaves every analysis untrained
    for train_reasoning in (True, False):
        conv_ex = conversation_examples(render, conv, "assistant", "auto", "test", train_reasoning=train_reasoning)
        trained = [t[a:b] for t, sp in conv_ex for a, b in sp]
        assert any(("REASON" in t) for t in trained) == train_reasoning


def test_gptoss_text_beside_a_call_is_its_analysis(tok, tmp_path: Path) -> None:  # noqa: ANN001
    """gpt-oss's template renders the text of a call turn as that turn's analysis (its reasoning): trained with the
    call, kept in the final answer's context as the analysis would be."""
    examples = _build(tok, tmp_path, [{"messages": TEXT_AND_CALL, "tools": TOOLS}], str(GPTOSS))
    assert len(examples) == 2
    call, final = (_trained(tok, r) for r in examples)
    assert "analysis<|message|>PREAMBLE I will check the weather.<|end|>" in call[0] and "get_weather" in call[0]
    assert "PREAMBLE I will check the weather." in tok.decode(examples[1]["input_ids"])
    assert final == ["<|channel|>final<|message|>It is 18 C.<|return|>"]
    # train_on: all trains the whole rendering, which leaves out the call's analysis as it leaves out reasoning
    whole = _build(tok, tmp_path, [{"messages": TEXT_AND_CALL, "tools": TOOLS}], str(GPTOSS), train_on="all")
    assert "PREAMBLE" not in tok.decode(whole[0]["input_ids"])


def test_gptoss_preference_answers_keep_the_calls_analysis(tok) -> None:  # noqa: ANN001
    """A preference answer of a call, its result and the final answer is the text the model writes and reads after
    the prompt: the call's analysis stays (the whole rendering would drop it: "drops the reasoning of `chosen`")."""
    from tunekit.data.pair_tokens import pair_texts
    from tunekit.data.preference import check_renders, preference_row
    from tunekit.data.schema import DatasetSpec

    raw = _gptoss_trace(True)
    row = preference_row({"prompt": raw[:1], "chosen": raw[1:], "rejected": "No idea."},
                         DatasetSpec(path="p.jsonl", format="preference"), "p.jsonl:1")
    render = renderer(tok, GPTOSS.read_text(), "gptoss")
    check_renders(render, row, "p.jsonl:1")
    prompt, chosen = pair_texts(render, row["prompt"], row["chosen"], "p.jsonl:1")
    sft = conversation_examples(render, _conv(raw), "assistant", "auto", "test")[-1][0]
    assert prompt + chosen == sft  # the pair is SFT's example of the final answer
    assert "REASON1 Check Paris." in chosen and chosen.endswith("FINAL It is mild.<|return|>")


# ---------------------------------------------------------------------------------- template errors, hinted


def test_mistral_call_id_error_names_the_id_rule(tok, tmp_path: Path) -> None:  # noqa: ANN001
    rows = [{"messages": [{**m, **({"tool_calls": [_call("Paris", "call_abc")]} if "tool_calls" in m else {}),
                           **({"tool_call_id": "call_abc"} if m["role"] == "tool" else {})}
                          for m in TEXT_AND_CALL], "tools": TOOLS}]
    rows[0]["messages"][1]["content"] = ""
    with pytest.raises(UserError) as e:
        _build(tok, tmp_path, rows, "mistral-v0.3")
    msg = str(e.value)
    assert "d.jsonl: row 1" in msg and "Tool call IDs should be alphanumeric strings with length 9!" in msg
    assert "9 letters or digits" in msg and "`tool_call_id`" in msg and "choose a template that renders them" not in msg


def test_llama31_parallel_calls_error_says_one_call_per_turn(tok, tmp_path: Path) -> None:  # noqa: ANN001
    raw = [{"role": "user", "content": "Paris and Rome?"},
           {"role": "assistant", "content": "", "tool_calls": [_call("Paris"), _call("Rome", "def456UVW")]},
           {"role": "tool", "content": "18 C"}, {"role": "tool", "content": "21 C"},
           {"role": "assistant", "content": "18 and 21."}]
    with pytest.raises(UserError) as e:
        _build(tok, tmp_path, [{"messages": raw, "tools": TOOLS}], "llama3.1")
    msg = str(e.value)
    assert "This model only supports single tool-calls at once!" in msg and "one tool call per assistant turn" in msg
    assert "choose a template that renders them" not in msg


def test_deepseek_reasoning_after_tool_results_says_the_template_writes_none_there(tok, tmp_path: Path) -> None:  # noqa: ANN001
    """DeepSeek's template writes the answer only after tool outputs; the error said to use DeepSeek-R1's template,
    the one in use."""
    raw = [{"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": "", "tool_calls": [{**_call("Paris"), "function": {
               "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
           {"role": "tool", "content": "18 C"},
           {"role": "assistant", "content": "It is 18 C.", "reasoning_content": "The tool said 18."}]
    with pytest.raises(UserError) as e:
        _build(tok, tmp_path, [{"messages": raw}], "deepseek-v3")
    msg = str(e.value)
    assert "d.jsonl: row 1" in msg and "follows tool results" in msg and "DeepSeek-R1's" not in msg


def test_gptoss_rule_errors_get_hints_that_fit_them(tok, tmp_path: Path) -> None:  # noqa: ANN001
    """gpt-oss renders tools, so its own refusals are not answered with "choose a template that renders them"."""
    both = [{**m, "reasoning_content": "Check."} if m.get("tool_calls") else m for m in TEXT_AND_CALL]
    with pytest.raises(UserError) as e:
        _build(tok, tmp_path, [{"messages": both, "tools": TOOLS}], str(GPTOSS))
    assert "Cannot pass both content and thinking" in str(e.value) and "keep one of the two" in str(e.value)
    orphan = [TEXT_AND_CALL[0], {"role": "tool", "content": "18 C"}, TEXT_AND_CALL[3]]
    with pytest.raises(UserError) as e:
        _build(tok, tmp_path, [{"messages": orphan}], str(GPTOSS))
    assert "no previous assistant message with a tool call" in str(e.value)
    assert "break one of its own rules" in str(e.value) and "choose a template that renders them" not in str(e.value)


@pytest.mark.parametrize("second", ["get_weather", "get_time"])
def test_parallel_calls_a_template_renders_one_of_are_an_error(second: str, tok, tmp_path: Path) -> None:  # noqa: ANN001
    """gpt-oss's template renders only a turn's first tool call: the second call was silently left out (calls were
    checked by name only, and two calls to one function share it)."""
    calls = [_call("Paris", "a"), {**_call("Rome", "b"), "function": {"name": second, "arguments": {"city": "Rome"}}}]
    raw = [{"role": "user", "content": "Paris and Rome?"},
           {"role": "assistant", "content": "", "tool_calls": calls},
           {"role": "tool", "content": "18 C"}, {"role": "tool", "content": "21 C"},
           {"role": "assistant", "content": "18 and 21."}]
    with pytest.raises(UserError, match=r"d.jsonl: row 1 .*makes 2 tool calls but .*renders fewer.*one tool call per "
                                        "assistant turn"):
        _build(tok, tmp_path, [{"messages": raw}], str(GPTOSS))
    trained = _trained(tok, _build(tok, tmp_path, [{"messages": raw}], "qwen3")[0])
    assert '"Rome"' in trained[0] and '"Paris"' in trained[0]
