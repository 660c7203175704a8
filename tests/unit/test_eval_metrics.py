"""Eval metrics, task files and report rules: pure functions and small files, no model."""

from __future__ import annotations

import json
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
