"""Eval metrics, task files and report rules: pure functions and small files, no model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tunekit.errors import UserError
from tunekit.eval import metrics as m
from tunekit.eval.schema import EvalTask, GenerationSettings


@pytest.mark.parametrize("text,expected", [
    ("so the answer is 42", 42.0), ("first 3 then\n#### 1,234", 1234.0), ("it is -7.5 degrees", -7.5),
    ("between 2 and 3,000.25", 3000.25), ("#### -12", -12.0), ("no digits here", None), ("12 minus 15 is -3.", -3.0),
])
def test_extract_number(text: str, expected: float | None) -> None:
    assert m.extract_number(text) == expected


CALL = '<tool_call>\n{"name": "calc", "arguments": {"a": 2, "op": "plus", "b": 8}}\n</tool_call>'


@pytest.mark.parametrize("text", [
    CALL,
    '<tool_call>{"arguments": {"b": 8, "a": 2, "op": "plus"}, "name": "calc"}</tool_call>',  # key order, spacing
    '[TOOL_CALLS] [{"name": "calc", "arguments": {"a": 2, "op": "plus", "b": 8}}]',  # Mistral
    '{"name": "calc", "parameters": {"a": 2, "op": "plus", "b": 8}}',  # Llama-3.1 JSON tool calling
    '<tool_call>{"name": "calc", "arguments": "{\\"a\\": 2, \\"op\\": \\"plus\\", \\"b\\": 8}"}</tool_call>',  # JSON string
    'Let me compute. <tool_call>\n{"name": "calc", "arguments": {"a": 2, "op": "plus", "b": 8}}\n</tool_call>}',
    # Command-R (`Action:` and a JSON list, as its tool-use template asks) and Command R7B / A (<|START_ACTION|>)
    'Action: ```json\n[\n    {\n        "tool_name": "calc",\n        "parameters": {"a": 2, "op": "plus", "b": 8}\n'
    '    }\n]```',
    '<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "calc", "parameters": {"a": 2, "op": "plus", "b": 8}}'
    '\n]<|END_ACTION|>',
    "<tool_call>\n{'arguments': {'a': 2, 'op': 'plus', 'b': 8}, 'name': 'calc'}\n</tool_call>",  # Hermes FC v1
    '<function=calc>{"a": 2, "op": "plus", "b": 8}</function>',  # Llama 3.1's custom tool format
    '<|tool_call|>[{"name": "calc", "arguments": {"a": 2, "op": "plus", "b": 8}}]<|/tool_call|>',  # Phi-4-mini
])
def test_tool_calls_are_read_in_every_family_format(text: str) -> None:
    assert m.tool_calls_in(text) == [{"name": "calc", "arguments": {"a": 2, "op": "plus", "b": 8}}]
    assert m.tool_call_match(text, CALL) == m.tool_call_name(text, CALL) == m.tool_call_format(text, CALL) == 1.0


def test_tool_call_metrics_tell_format_name_and_arguments_apart() -> None:
    wrong_args = CALL.replace('"a": 2', '"a": 3')
    wrong_tool = '<tool_call>{"name": "weather", "arguments": {"city": "Rome"}}</tool_call>'
    truncated = CALL[:40]
    assert (m.tool_call_format(wrong_args, CALL), m.tool_call_name(wrong_args, CALL),
            m.tool_call_match(wrong_args, CALL)) == (1.0, 1.0, 0.0)
    assert (m.tool_call_format(wrong_tool, CALL), m.tool_call_name(wrong_tool, CALL),
            m.tool_call_match(wrong_tool, CALL)) == (1.0, 0.0, 0.0)
    assert m.tool_call_format(truncated, CALL) == m.tool_call_match(truncated, CALL) == 0.0
    assert m.tool_call_format("no call at all", CALL) == 0.0
    assert m.tool_call_match(CALL + CALL, CALL) == 0.0  # one call too many
    assert m.tool_call_format("It is 10.", "2 plus 8 is 10.") == m.tool_call_match("It is 10.", "10") == 1.0


def test_answer_metrics() -> None:
    assert m.exact_match("  The Cat. ", "the cat") == 1.0 and m.exact_match("a cat", "the cat") == 0.0
    assert m.numeric_match("I think 1,000.", "#### 1000") == 1.0 and m.numeric_match("999", "1000") == 0.0
    assert m.numeric_match("no number", "5") == 0.0
    assert m.contains("well, 3 plus 4 is 7.", "3 plus 4 is 7") == 1.0
    assert m.regex_match("answer: 7", "7") == 1.0 and m.regex_match("answer: 17", "7") == 0.0
    assert m.regex_match("final=7;", "7", pattern=r"final={answer};") == 1.0
    assert m.regex_match("so 2 times 3 is 6. Done", "2 times 3 is 6.") == 1.0  # answer ending in punctuation
    assert m.token_f1("the cat sat", "the cat sat") == 1.0
    assert m.token_f1("the cat", "the cat sat down") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert m.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)  # LCS a c d: P = R = 3/4
    assert m.rouge_l("x", "y") == 0.0


def test_pass_at_k_and_majority() -> None:
    samples = ["it is 5", "it is 7", "maybe 7", "7!"]
    s = m.score_samples(samples, "7", "numeric_match")
    assert s["numeric_match"] == 0.75 and s["numeric_match_pass@4"] == 1.0 and s["numeric_match_maj@4"] == 1.0
    s = m.score_samples(["5", "5", "7"], "7", "numeric_match")
    assert s["numeric_match_pass@3"] == 1.0 and s["numeric_match_maj@3"] == 0.0
    assert m.score_samples(["7"], "7", "exact_match") == {"exact_match": 1.0}


def test_sampling_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="temperature > 0"):
        GenerationSettings(num_samples=4)
    assert GenerationSettings(num_samples=4, temperature=0.7).num_samples == 4
    with pytest.raises(ValidationError, match="needs `data`"):
        EvalTask(name="t", kind="generate")


def test_task_row_missing_answer_names_file_and_row(tmp_path: Path) -> None:
    from tunekit.eval.tasks import read_examples

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n" + json.dumps({"prompt": "2+2"}) + "\n")
    task = EvalTask(name="t", kind="generate", data={"path": str(path), "format": "qa"})
    with pytest.raises(UserError) as info:
        read_examples(task)
    assert f"{path}: row 2" in str(info.value) and "missing answer field `answer`" in str(info.value)
    choice = tmp_path / "c.jsonl"
    choice.write_text(json.dumps({"prompt": "p", "choices": ["a", "b"], "answer": 5}) + "\n")
    task = EvalTask(name="c", kind="multiple_choice", data={"path": str(choice), "format": "choice"})
    with pytest.raises(UserError, match=r"row 1 \(line 1\): answer index 5 is out of range"):
        read_examples(task)


def test_shipped_tasks_read_and_unknown_task_suggests() -> None:
    from tunekit.eval.tasks import SHIPPED, read_examples, shipped_task

    for name in SHIPPED:
        assert read_examples(shipped_task(name))
    with pytest.raises(UserError, match="Did you mean `quickstart-arith`"):
        shipped_task("quickstart-arth")


def test_report_dir_never_overwrites(tmp_path: Path) -> None:
    from tunekit.eval.run import report_dir

    out = tmp_path / "eval"
    assert report_dir(out, False) == out
    out.mkdir()
    (out / "report.json").write_text("{}")
    assert report_dir(out, False) == tmp_path / "eval-2"
    (tmp_path / "eval-2").mkdir()
    (tmp_path / "eval-2" / "report.json").write_text("{}")
    assert report_dir(out, False) == tmp_path / "eval-3"
    assert report_dir(out, True) == out


def test_markdown_numbers_are_the_json_numbers() -> None:
    from tunekit.eval.report import build, markdown

    res = {"t": {"kind": "generate", "tuned": {"n": 2, "metrics": {"exact_match": 2 / 3}, "samples": []},
                 "base": {"n": 2, "metrics": {"exact_match": 1 / 7}, "samples": []}}}
    meta = {"target": "x", "model": "x", "base_model": "b", "created": "now", "seconds": 1.0, "plots": []}
    report = build(meta, res, None)
    assert report["tasks"]["t"]["tuned"]["exact_match"] == 0.666667
    row = next(line for line in markdown(report, 3).splitlines() if line.startswith("| exact_match"))
    cells = [float(c) for c in row.strip("|").split("|")[1:]]
    assert cells == [0.142857, 0.666667, report["tasks"]["t"]["diff"]["exact_match"]]


def test_tool_call_turn_target_is_the_rendered_call() -> None:
    from tunekit.eval.tasks import parse_row

    row = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "content": None,
                         "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                           "arguments": '{"city": "Paris"}'}}]}]}
    ex = parse_row(row, "messages", {}, "row 1")
    assert ex.answer == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert [m["role"] for m in ex.prompt] == ["user"]


def test_tool_eval_rows_keep_their_tools_and_reference_call() -> None:
    """A `messages` eval row ending at a tool call: the prompt is rendered with the tool schemas (from the task's
    `tools:` file), the reference is the call, and the loss scores the call turn as training renders it."""
    from transformers import AutoTokenizer

    from tunekit.data.masking import tokenize_with_mask
    from tunekit.data.templates import load_template
    from tunekit.eval.tasks import prompt_texts, read_examples
    from tunekit.model.builtin import TOKENIZER_DIR

    task = EvalTask(name="t", kind="generate", data={"path": "builtin:tools/eval.jsonl", "format": "messages",
                                                     "tools": "builtin:tools/tools.json"}, max_examples=2)
    examples = read_examples(task)
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.chat_template = load_template("qwen2.5")
    text = prompt_texts(tok, [examples[0].prompt])[0]
    assert '<tools>\n{"type": "function", "function": {"name": "calc"' in text
    assert text.endswith("<|im_start|>assistant\n")
    assert m.tool_calls_in(examples[0].answer) and m.tool_call_match(examples[0].answer, examples[0].answer) == 1.0
    enc = tokenize_with_mask(tok, examples[0].conversation(), "assistant", "t")
    scored = tok.decode([i for i, k in zip(enc["input_ids"], enc["mask"]) if k])
    assert scored == examples[0].answer + "<|im_end|>\n"


def test_default_task_on_each_eval_format() -> None:
    """`tunekit eval RUN` without tasks: loss on SFT eval data, the numeric answer on reft's `prompt_answer` questions
    (renamed columns followed), and a clear refusal for a format no eval task reads."""
    from tunekit.data.schema import DatasetSpec
    from tunekit.eval.run import heldout_task

    loss = heldout_task(DatasetSpec(path="builtin:quickstart/eval.jsonl", format="messages"), "")
    assert (loss.name, loss.kind, loss.data.format) == ("heldout-loss", "loss", "messages")
    qa = heldout_task(DatasetSpec(path="q.jsonl", format="prompt_answer", columns={"question": "q"}), "-2")
    assert (qa.name, qa.kind, qa.metrics, qa.data.format) == ("heldout-answers-2", "generate", ["numeric_match"], "qa")
    assert qa.data.columns == {"prompt": "q", "answer": "answer"}
    with pytest.raises(UserError, match="data.eval: format preference has no default eval task"):
        heldout_task(DatasetSpec(path="p.jsonl", format="preference"), "")


def test_a_dpo_run_without_tasks_is_refused_before_announcing_tasks(capsys) -> None:  # noqa: ANN001
    """It printed "tasks: none given; loss and perplexity on the run's eval split" and then refused."""
    from types import SimpleNamespace

    from tests.conftest import RECIPES
    from tunekit.eval.run import choose_tasks
    from tunekit.recipe.load import load_recipe

    recipe = load_recipe(RECIPES / "dpo.yaml")
    with pytest.raises(UserError, match="format preference has no default eval task"):
        choose_tasks(SimpleNamespace(recipe=recipe, run_dir=None, label="runs/dpo"), [])
    assert "tasks: none given" not in capsys.readouterr().err


def test_reasoning_is_not_the_answer() -> None:
    """Generation metrics score what follows the reasoning block; a block that never closed (cut by
    max_new_tokens, or opened by the prompt as DeepSeek-R1's) is no answer, not a number picked from it."""
    from tunekit.eval.tasks import final_answer

    specials = ["<|im_end|>", "<|return|>", "<|end|>", "<|start|>", "<|channel|>", "<|message|>"]

    def answer(raw: str, prompt: str = "") -> str:
        clean = raw
        for t in specials:
            clean = clean.replace(t, "")
        return final_answer(raw, clean.strip(), prompt, specials)

    assert answer("<think>2 and 2 make 4, not 5</think>\n\n4<|im_end|>") == "4"
    assert answer("2 and 2 make 4\n</think>\n\n4", "<｜Assistant｜><think>\n") == "4"
    assert answer("2 and 2 make 4, or 5", "<｜Assistant｜><think>\n") == ""
    assert answer("<think>2 and 2 make 4") == ""
    assert answer("4<|im_end|>", "<|im_start|>assistant\n") == "4"
    assert m.numeric_match(answer("<think>maybe 5</think>4"), "4") == 1.0
    # gpt-oss (harmony): the analysis channel, then the final one; skipping special tokens left
    # "analysis2 and 2 make 4, not 5assistantfinal4" to be scored
    harmony = "<|channel|>analysis<|message|>2 and 2 make 4, not 5<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>"
    assert answer(harmony, "<|start|>assistant") == "4"
    assert answer("<|channel|>analysis<|message|>2 and 2 make", "<|start|>assistant") == ""



def test_tool_calls_of_gpt_oss_are_scored() -> None:
    """gpt-oss writes a tool call as a message addressed `to=functions.NAME` ended by <|call|> (no final channel):
    the tool-call metrics read it like the reference's `<tool_call>` block; before, the skipped special tokens left
    "analysis...commentary to=functions.get_weather json{...}", which holds no call."""
    from tunekit.eval.tasks import answer_text, final_answer

    specials = ["<|end|>", "<|start|>", "<|channel|>", "<|message|>", "<|call|>", "<|constrain|>"]
    ref = answer_text({"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}}]})
    outputs = [  # the recipient in the channel header, or before it (both are valid harmony)
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"unit": "C", "city": "Oslo"}<|call|>',
        '<|channel|>analysis<|message|>x<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary '
        'json<|message|>{"city":"Oslo","unit":"C"}<|call|>']
    for raw in outputs:
        clean = raw
        for t in specials:
            clean = clean.replace(t, "")
        pred = final_answer(raw, clean, "<|start|>assistant", specials)
        assert m.tool_call_match(pred, ref) == 1.0, pred
    wrong = outputs[0].replace('"Oslo"', '"Bergen"')
    assert m.tool_call_match(final_answer(wrong, "", "", specials), ref) == 0.0
    assert m.tool_call_name(final_answer(wrong, "", "", specials), ref) == 1.0
    malformed = outputs[0].replace('{"unit": "C", "city": "Oslo"}', '{"unit": "C", ')
    assert m.tool_call_format(final_answer(malformed, "", "", specials), ref) == 0.0


WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "zip": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string"}}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
        "tz": {"type": "string"}}}}}]
WEATHER_CALLS = [
    {"type": "function", "function": {"name": "get_weather", "arguments": {
        "city": "Paris", "zip": "75001", "days": 3, "metric": True, "tags": ["a", "b"]}}},
    {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "CET"}}}]
# every tag-like token of the families below: the worst case, a tokenizer that marks all of them special
MARKUP = re.compile(r"<\|[^|<>]*\|>|<｜[^｜]*｜>|<\|[a-z_]+>|<[a-z_]+\|>|\[e~\[|\]~b\]|<seed:[a-z]+>|</?minimax:tool_call>"
                    r"|</?think>|</?tool_call>|</?arg_(?:key|value)>")


def _without(text: str, specials: list[str]) -> str:
    for token in specials:
        text = text.replace(token, "")
    return text.strip()


@pytest.mark.parametrize("prompt_end,written", [
    pytest.param('nt｜><think>\n',  # TRL deepseekv3.jinja
                 '\n</think>\n\n'
                 '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n'
                 '{"city": "Paris", "zip": "75001", "days": 3, "metric": true, "tags": ["a", "b"]}\n'
                 '```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n'
                 '{"tz": "CET"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>',
                 id="deepseek-v3"),
    pytest.param('nt｜></think>',  # llama.cpp DeepSeek-V3.1
                 '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", "zip": "75001", "days": 3, "metric": true, "tags": ["a", "b"]}<｜tool▁call▁end｜>'
                 '<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"tz": "CET"}<｜tool▁call▁end｜>'
                 '<｜tool▁calls▁end｜><｜end▁of▁sentence｜>',
                 id="deepseek-v3.1"),
    pytest.param('|im_middle|>',  # llama.cpp Kimi-K2-Thinking
                 '<think></think><|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris", "zip": "75001", "days": 3, "metric": true, "tags": ["a", "b"]}<|tool_call_end|>'
                 '<|tool_call_begin|>functions.get_time:1<|tool_call_argument_begin|>{"tz": "CET"}<|tool_call_end|>'
                 '<|tool_calls_section_end|><|im_end|>',
                 id="kimi-k2"),
    pytest.param('|assistant|>',  # TRL glm4moe.jinja
                 '\n<think></think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n'
                 '<arg_value>Paris</arg_value>\n<arg_key>zip</arg_key>\n'
                 '<arg_value>75001</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n'
                 '<arg_key>metric</arg_key>\n<arg_value>true</arg_value>\n<arg_key>tags</arg_key>\n'
                 '<arg_value>["a", "b"]</arg_value>\n</tool_call>\n<tool_call>get_time\n'
                 '<arg_key>tz</arg_key>\n<arg_value>CET</arg_value>\n</tool_call>',
                 id="glm-4.5"),
    pytest.param('ant\n<think>\n',  # TRL qwen3_5_think.jinja
                 '\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n'
                 '</parameter>\n<parameter=zip>\n75001\n</parameter>\n<parameter=days>\n3\n'
                 '</parameter>\n<parameter=metric>\nTrue\n</parameter>\n<parameter=tags>\n["a", "b"]\n'
                 '</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n'
                 '<parameter=tz>\nCET\n</parameter>\n</function>\n</tool_call><|im_end|>\n',
                 id="qwen3.5"),
    pytest.param('ant\n<think>\n',  # TRL qwen3_6.jinja
                 '\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n'
                 '</parameter>\n<parameter=zip>\n75001\n</parameter>\n<parameter=days>\n3\n'
                 '</parameter>\n<parameter=metric>\ntrue\n</parameter>\n<parameter=tags>\n["a", "b"]\n'
                 '</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n'
                 '<parameter=tz>\nCET\n</parameter>\n</function>\n</tool_call><|im_end|>\n',
                 id="qwen3.6"),
    pytest.param('ant\n<think>\n',  # TRL nemotron_3_nano.jinja
                 '\n</think>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n'
                 '</parameter>\n<parameter=zip>\n75001\n</parameter>\n<parameter=days>\n3\n'
                 '</parameter>\n<parameter=metric>\nTrue\n</parameter>\n<parameter=tags>\n["a", "b"]\n'
                 '</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n'
                 '<parameter=tz>\nCET\n</parameter>\n</function>\n</tool_call>\n<|im_end|>\n',
                 id="nemotron3"),
    pytest.param('s>assistant\n',  # llama.cpp Seed-OSS
                 '<seed:tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n'
                 '<parameter=zip>75001</parameter>\n<parameter=days>3</parameter>\n'
                 "<parameter=metric>True</parameter>\n<parameter=tags>['a', 'b']</parameter>\n"
                 '</function>\n</seed:tool_call>\n<seed:tool_call>\n<function=get_time>\n'
                 '<parameter=tz>CET</parameter>\n</function>\n</seed:tool_call><seed:eos>',
                 id="seed-oss"),
    pytest.param(']ai\n<think>\n',  # llama.cpp MiniMax-M2
                 '\n</think>\n\n\n<minimax:tool_call>\n<invoke name="get_weather">\n'
                 '<parameter name="city">Paris</parameter>\n'
                 '<parameter name="zip">75001</parameter>\n<parameter name="days">3</parameter>\n'
                 '<parameter name="metric">true</parameter>\n'
                 '<parameter name="tags">["a", "b"]</parameter>\n</invoke>\n'
                 '<invoke name="get_time">\n<parameter name="tz">CET</parameter>\n</invoke>\n'
                 '</minimax:tool_call>\n[e~[\n',
                 id="minimax-m2"),
    pytest.param('|>assistant\n',  # TRL lfm2_2_5.jinja
                 "<|tool_call_start|>[get_weather(city='Paris', zip='75001', days=3, metric=True, tags=['a', 'b']), get_time(tz='CET')]<|tool_call_end|>"
                 '<|im_end|>\n',
                 id="lfm2.5"),
    pytest.param('t\n<channel|>',  # llama.cpp Gemma 4
                 '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3,metric:true,tags:[<|"|>a<|"|>,<|"|>b<|"|>],zip:<|"|>75001<|"|>}<tool_call|>'
                 '<|tool_call>call:get_time{tz:<|"|>CET<|"|>}<tool_call|><turn|>\n',
                 id="gemma4"),
])
def test_native_tool_calls_of_every_family_are_scored(prompt_end: str, written: str) -> None:
    """What each family's template trains for an assistant turn with two calls (tunekit's data stage rendering the
    template named beside it: TRL's chat_templates or llama.cpp's models/templates, see docs/data.md; string,
    number, boolean and list arguments) reads back as exactly the reference's calls, with reasoning before them too.
    Before, only JSON-with-name syntax was read, so a correct call in these syntaxes scored 0."""
    from tunekit.eval.tasks import answer_text, final_answer

    ref = answer_text({"role": "assistant", "content": "", "tool_calls": WEATHER_CALLS})
    outputs = [written]
    if "</think>" in written:  # the family reasons in <think> (opened by the prompt or by the model)
        outputs.append(written.replace("</think>", "Paris: the weather tool, then the clock.\n</think>", 1)
                       if prompt_end.endswith("<think>\n") else
                       written.replace("<think></think>", "<think>Paris: the weather tool.</think>", 1))
    for out in outputs:
        specials = sorted(set(MARKUP.findall(prompt_end + out)), key=len, reverse=True)
        pred = final_answer(out, _without(out, specials), prompt_end, specials, WEATHER_TOOLS)
        assert m.tool_call_match(pred, ref) == m.tool_call_format(pred, ref) == 1.0, pred


@pytest.mark.parametrize("template,variables,call", [
    ("deepseek-v3", {}, {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}),
    ("llama3.1", {"builtin_tools": ["brave_search"]}, {"name": "brave_search", "arguments": {"query": "Paris"}}),
])
def test_calls_the_shipped_templates_train_are_scored(template: str, variables: dict, call: dict) -> None:
    """The text the data stage trains with a shipped template (DeepSeek-V3's `<｜tool▁call▁begin｜>function...`,
    Llama 3.1's built-in `<|python_tag|>brave_search.call(query="...")`) is what a tuned model writes: it scores 1
    against the row's reference, and 0 with other arguments (the tester's report: it scored 0 either way)."""
    from transformers import AutoTokenizer

    from tunekit.data.formats import FORMATS
    from tunekit.data.masking import conversation_examples
    from tunekit.data.schema import DatasetSpec
    from tunekit.data.templates import load_template, renderer, with_variables
    from tunekit.eval.tasks import answer_text, final_answer
    from tunekit.model.builtin import TOKENIZER_DIR

    row = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": call}]}]}
    msgs = FORMATS["messages"](row, DatasetSpec(path="-", format="messages"), "row 1")
    render = renderer(AutoTokenizer.from_pretrained(TOKENIZER_DIR), with_variables(load_template(template), variables))
    [(text, [(start, end)])] = conversation_examples(render, msgs, "assistant", "auto", "row 1")
    prompt, written = text[:start], text[start:end]
    specials = sorted(set(MARKUP.findall(text)), key=len, reverse=True)
    ref = answer_text(msgs[-1])
    assert m.tool_call_match(final_answer(written, _without(written, specials), prompt, specials), ref) == 1.0
    other = written.replace("Paris", "Rome")
    assert m.tool_call_match(final_answer(other, _without(other, specials), prompt, specials), ref) == 0.0
    assert m.tool_call_name(final_answer(other, _without(other, specials), prompt, specials), ref) == 1.0


def test_bare_text_argument_values_follow_the_tool_schema() -> None:
    """GLM, Qwen3.5, Seed-OSS and MiniMax write string values bare (`<arg_value>75001</arg_value>`): the row's tool
    schema says which are strings; without one, a value that reads as JSON is taken as JSON."""
    from tunekit.eval.calls import canonical_calls

    glm = "<tool_call>get_weather\n<arg_key>zip</arg_key>\n<arg_value>75001</arg_value>\n<arg_key>days</arg_key>\n" \
          "<arg_value>3</arg_value>\n</tool_call>"
    assert m.tool_calls_in(canonical_calls(glm, WEATHER_TOOLS)) == [
        {"name": "get_weather", "arguments": {"zip": "75001", "days": 3}}]
    assert m.tool_calls_in(glm) == [{"name": "get_weather", "arguments": {"zip": 75001, "days": 3}}]


def test_python_literal_calls_are_read_and_never_run() -> None:
    """Hermes function-calling v1 writes its calls as Python dicts (single quotes): they read as calls, so a
    prediction without a call no longer matches the reference's format (it scored tool_call_format 1.0). The text is
    parsed, never evaluated."""
    hermes = "<tool_call>\n{'arguments': {'symbol': 'AAPL'}, 'name': 'get_stock_price'}\n</tool_call>"
    as_json = '<tool_call>\n{"name": "get_stock_price", "arguments": {"symbol": "AAPL"}}\n</tool_call>'
    assert m.tool_calls_in(hermes) == [{"name": "get_stock_price", "arguments": {"symbol": "AAPL"}}]
    assert m.tool_call_format("I don't know.", hermes) == 0.0
    assert m.tool_call_match(as_json, hermes) == m.tool_call_match(hermes, as_json) == 1.0
    assert m.tool_calls_in("<tool_call>{'name': 'x', 'arguments': {'a': __import__('os').getcwd()}}</tool_call>") == []


def test_a_reference_call_that_does_not_read_is_an_error_naming_the_row(tmp_path: Path) -> None:
    """A task scoring tool calls whose reference marks a call the metrics cannot read would reward predictions
    without calls: refused when the rows are read (check_tasks, before any model loads), naming the row."""
    from tunekit.eval.run import check_tasks

    def turn(content: str) -> dict:
        return {"messages": [{"role": "user", "content": "AAPL?"}, {"role": "assistant", "content": content}]}

    good = "<tool_call>\n{'arguments': {'symbol': 'AAPL'}, 'name': 'get_stock_price'}\n</tool_call>"
    bad = "<tool_call>\n{'arguments': {'symbol': AAPL}, 'name': 'get_stock_price'}\n</tool_call>"  # unquoted AAPL
    data = tmp_path / "calls.jsonl"
    data.write_text("\n".join(json.dumps(turn(c)) for c in (good, "It is $150.", bad)) + "\n")

    def task(metrics: list[str]) -> EvalTask:
        return EvalTask(name="calls", kind="generate", data={"path": str(data), "format": "messages"}, metrics=metrics)

    refused = r"calls.jsonl: row 3 \(line 3\): eval task `calls` scores tool calls, but the reference answer \(the last"
    with pytest.raises(UserError, match=refused + r" assistant turn\) marks a call that does not read as one: .*AAPL}"):
        check_tasks([task(["tool_call_format"])])
    check_tasks([task(["exact_match"])])  # not scoring calls: the text is just a reference
    data.write_text(json.dumps(turn("[TOOL_CALLS] get_stock_price AAPL")) + "\n")
    with pytest.raises(UserError, match=r"calls.jsonl: row 1 \(line 1\): .* '\[TOOL_CALLS\] get_stock_price AAPL'"):
        check_tasks([task(["tool_call_match"])])


def test_rows_without_scored_tokens_are_counted_apart_and_never_win() -> None:
    """A loss row whose answer max_length cut off adds no token: it is left out of `n` and reported; a cut-off
    multiple-choice option would score log-probability 0 (probability 1) and win, so it is an error."""
    from tunekit.errors import UserError
    from tunekit.eval.tasks import loss_result

    task = EvalTask(name="t", kind="loss", data={"path": "x.jsonl", "format": "messages"})
    got = loss_result(task, [(-4.0, 2), (0.0, 0)], {"max_length": 8})
    assert got["n"] == 1 and got["rows_without_tokens"] == 1 and got["metrics"]["loss"] == 2.0
    with pytest.raises(UserError, match="no row has a scored token within max_length 8"):
        loss_result(task, [(0.0, 0)], {"max_length": 8})


@pytest.mark.parametrize(("row", "error"), [({"prompt": "1+1?", "answer": None}, "`answer` must be a non-empty"),
                                            ({"prompt": ["1+1?"], "answer": "2"}, "`prompt` must be a non-empty")])
def test_qa_rows_with_null_or_non_text_fields_are_errors(row: dict, error: str) -> None:
    from tunekit.errors import UserError
    from tunekit.eval.tasks import parse_row

    with pytest.raises(UserError, match=f"row 1: {error}"):  # it was scored against the text "None"
        parse_row(row, "qa", {}, "row 1")


def test_a_cut_off_choice_is_an_error(tmp_path) -> None:  # noqa: ANN001
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.errors import UserError
    from tunekit.eval.tasks import run_multiple_choice
    from tunekit.model.builtin import TOKENIZER_DIR, materialize

    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"prompt": "Pick the sum of two and two. " * 8, "choices": ["four", "five"], "answer": 0})
                 + "\n")
    task = EvalTask(name="c", kind="multiple_choice", data={"path": str(f), "format": "choice"})
    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    ctx = {"batch_size": 2, "which": "tuned"}
    assert run_multiple_choice(task, model, tok, {**ctx, "max_length": 256})["n"] == 1
    with pytest.raises(UserError, match=r"c.jsonl: row 1 \(line 1\): a choice has no scored token within max_length 16"):
        run_multiple_choice(task, model, tok, {**ctx, "max_length": 16})


def test_a_recipe_target_renders_with_the_recipes_chat_template() -> None:
    """`tunekit eval RECIPE.yaml` (the base model with the recipe's tasks) loaded the base tokenizer without the
    recipe's `data.chat_template`: recipes/tools.yaml failed with "the tokenizer's chat template ignores tools"."""
    from tests.conftest import RECIPES
    from tunekit.data.templates import load_template
    from tunekit.targets import load_tokenizer_for, resolve_target

    tokenizer = load_tokenizer_for(resolve_target(RECIPES / "tools.yaml"))
    assert tokenizer.chat_template == load_template("qwen2.5")
