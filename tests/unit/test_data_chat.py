"""Chat data as real model families and peer datasets write it: tool calls, content parts, per-turn training
flags, errors raised inside chat templates, JSON files holding one object, preference rows checked for sense."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli, tiny_recipe
from tunekit.data.build import build_datasets
from tunekit.data.schema import DataConfig
from tunekit.data.templates import load_template
from tunekit.errors import UserError
from tunekit.model.builtin import TOKENIZER_DIR

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "data"
# A Gemma-2-like template: refuses a system turn with raise_exception, as google/gemma-2-*-it's template does.
NO_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
             "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture()
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _build(tok, tmp_path: Path, *specs: dict, **options):
    options.setdefault("cache_dir", str(tmp_path / "cache"))
    return build_datasets(DataConfig(train=list(specs), **options), tok, seed=0)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trained(tok, row: dict) -> str:
    return tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])


def _pieces(tok, pieces: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    ids, labels = [], []
    for text, trained in pieces:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    labels[0] = -100  # the first token is never trained (nothing predicts it)
    return ids, labels


def _chat(*turns: tuple[str, str], **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


# -------------------------------------------------------------------------------------------------- tool use


def test_qwen25_tool_call_conversation_token_by_token(tok, tmp_path: Path) -> None:
    train, _, _ = _build(tok, tmp_path, {"path": str(FIX / "tool_calls.jsonl"), "format": "messages"},
                         chat_template="qwen2.5", max_length=1024)
    row = json.loads((FIX / "tool_calls.jsonl").read_text())
    tools_json = json.dumps(row["tools"][0])
    ids, labels = _pieces(tok, [
        ("<|im_start|>system\nYou can check the weather.\n\n# Tools\n\nYou may call one or more functions to assist "
         "with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
         f"<tools>\n{tools_json}\n</tools>\n\nFor each function call, return a json object with function name and "
         "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
         "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
         "<|im_start|>assistant\n", 0),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n', 1),
        ("<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n", 0),
        ("It is 18 C and sunny in Paris.<|im_end|>\n", 1),
    ])
    assert train[0]["input_ids"] == ids
    assert train[0]["labels"] == labels
    # The same text as transformers' apply_chat_template given the parsed arguments and tools=.
    msgs = row["messages"]
    msgs[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    reference = tok.apply_chat_template(msgs, tools=row["tools"], chat_template=load_template("qwen2.5"),
                                        tokenize=False)
    assert tok.decode(train[0]["input_ids"]) == reference


def test_sharegpt_function_call_observation_and_tools_column_match_openai_messages(tok, tmp_path: Path) -> None:
    """LLaMA-Factory's shape (function_call/observation roles, tools as a JSON string of bare schemas, arguments
    as an object) trains exactly what the OpenAI shape (tool_calls with a JSON-string arguments) trains."""
    openai, _, _ = _build(tok, tmp_path, {"path": str(FIX / "tool_calls.jsonl"), "format": "messages"},
                          chat_template="qwen2.5", max_length=1024)
    sharegpt, _, _ = _build(tok, tmp_path, {"path": str(FIX / "sharegpt_tools.json"), "format": "sharegpt"},
                            chat_template="qwen2.5", max_length=1024)
    assert sharegpt[0]["input_ids"] == openai[0]["input_ids"]
    assert sharegpt[0]["labels"] == openai[0]["labels"]


def test_dataset_tools_file_reaches_rows_without_their_own_tools(tok, tmp_path: Path) -> None:
    """`tools:` on a dataset (JSON or YAML, list or {tools: [...]}, bare or OpenAI schemas) trains exactly what the
    same schemas in a `tools` column train; a row's own column wins over the file."""
    row = json.loads((FIX / "tool_calls.jsonl").read_text())
    with_column, _, _ = _build(tok, tmp_path, {"path": str(FIX / "tool_calls.jsonl"), "format": "messages"},
                               chat_template="qwen2.5", max_length=1024)
    schemas = row.pop("tools")
    bare = _write(tmp_path / "bare.jsonl", [row])
    (tmp_path / "tools.json").write_text(json.dumps(schemas))
    (tmp_path / "tools.yaml").write_text(yaml.safe_dump({"tools": [t["function"] for t in schemas]}, sort_keys=False))
    for name in ("tools.json", "tools.yaml"):
        got, _, _ = _build(tok, tmp_path, {"path": str(bare), "format": "messages", "tools": str(tmp_path / name)},
                           chat_template="qwen2.5", max_length=1024)
        assert got[0]["input_ids"] == with_column[0]["input_ids"] and got[0]["labels"] == with_column[0]["labels"]
    other = [{"type": "function", "function": {"name": "other_tool", "parameters": {"type": "object"}}}]
    (tmp_path / "other.json").write_text(json.dumps(other))
    own, _, _ = _build(tok, tmp_path, {"path": str(FIX / "tool_calls.jsonl"), "format": "messages",
                                               "tools": str(tmp_path / "other.json")},
                       chat_template="qwen2.5", max_length=1024)
    assert own[0]["input_ids"] == with_column[0]["input_ids"]
    # The tools file is part of the data cache key: new schemas in the same file are new tokens, not a stale entry.
    from tunekit.data.formats import read_tools

    (tmp_path / "tools.json").write_text(json.dumps(other))
    read_tools.cache_clear()  # a new process would read the file afresh
    changed, _, _ = _build(tok, tmp_path, {"path": str(bare), "format": "messages", "tools": str(tmp_path / "tools.json")},
                           chat_template="qwen2.5", max_length=1024)
    assert "other_tool" in tok.decode(changed[0]["input_ids"])


def test_tool_schemas_reach_every_format_that_can_hold_them(tok, tmp_path: Path) -> None:
    """The same one-turn conversation with tool schemas trains the same tokens whatever the row shape: a `messages`
    row's `tools`, OpenAI's legacy `functions` column (it goes with `function_call` turns), a string
    prompt/completion row's `tools` (xLAM's rows) or the dataset's `tools:` file, an alpaca row's `tools` (LLaMA-
    Factory's). Before, all but the first silently rendered no tools block."""
    schema = {"name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    q, a = "Weather in Oslo?", '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    (tmp_path / "tools.json").write_text(json.dumps([schema]))
    shapes = {
        "messages": ({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                      "tools": [{"type": "function", "function": schema}]}, {}),
        "functions": ({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                       "functions": [schema]}, {}),
        "prompt_completion": ({"query": q, "answers": a, "tools": json.dumps([schema])},
                              {"columns": {"prompt": "query", "completion": "answers"}}),
        "tools_file": ({"prompt": q, "completion": a}, {"tools": str(tmp_path / "tools.json")}),
        "alpaca": ({"instruction": q, "output": a, "tools": json.dumps([schema])}, {}),
    }
    built = {}
    for name, (row, extra) in shapes.items():
        fmt = {"functions": "messages", "tools_file": "prompt_completion"}.get(name, name)
        spec = {"path": str(_write(tmp_path / f"{name}.jsonl", [row])), "format": fmt, **extra}
        built[name] = _build(tok, tmp_path / name, spec, chat_template="qwen2.5")[0][0]
    assert "get_weather" in tok.decode(built["messages"]["input_ids"]).split("<|im_start|>user")[0]
    for name, got in built.items():
        assert (got["input_ids"], got["labels"]) == (built["messages"]["input_ids"], built["messages"]["labels"]), name
    both = {"messages": shapes["functions"][0]["messages"], "tools": [schema], "functions": [schema]}
    with pytest.raises(UserError, match="both `tools` and `functions`"):
        _build(tok, tmp_path / "both", {"path": str(_write(tmp_path / "both.jsonl", [both])), "format": "messages"},
               chat_template="qwen2.5")


def test_a_tool_result_given_as_an_object_is_its_json_text(tok, tmp_path: Path) -> None:
    """A tool turn's content as a JSON object (some exports keep the result parsed) trains as the JSON-encoded
    string would (it was an error); other roles' objects stay errors. A transcript string where a list of turns is
    expected (glaive-function-calling-v2's `chat`) says to convert the rows, not to map the column."""
    def rows(result: object) -> list[dict]:
        return [{"messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "content": result}, {"role": "assistant", "content": "Sunny, 20 C."}]}]

    got = [_build(tok, tmp_path / k, {"path": str(_write(tmp_path / f"{k}.jsonl", rows(v))), "format": "messages"},
                  chat_template="qwen2.5")[0][0] for k, v in (("obj", {"temp": 20, "sky": "sunny"}),
                                                             ("str", '{"temp": 20, "sky": "sunny"}'))]
    assert got[0]["input_ids"] == got[1]["input_ids"] and got[0]["labels"] == got[1]["labels"]
    bad = [{"messages": [{"role": "user", "content": {"q": 1}}, {"role": "assistant", "content": "x"}]}]
    with pytest.raises(UserError, match="must be a string or a list of text parts"):
        _build(tok, tmp_path / "bad", {"path": str(_write(tmp_path / "bad.jsonl", bad)), "format": "messages"},
               chat_template="qwen2.5")
    glaive = [{"system": "SYSTEM: You are a helpful assistant with access to functions.",
               "chat": "USER: Weather in Oslo?\n\n\nASSISTANT: <functioncall> {\"name\": \"get_weather\"} <|endoftext|>"}]
    with pytest.raises(UserError, match="`chat` holds the conversation as one transcript string"):
        _build(tok, tmp_path / "gl", {"path": str(_write(tmp_path / "gl.jsonl", glaive)), "format": "messages"},
               chat_template="qwen2.5")


def test_alpaca_history_is_the_conversation_before_the_instruction(tok, tmp_path: Path) -> None:
    """LLaMA-Factory's alpaca rows carry earlier turns in `history` ([instruction, response] pairs); they were
    silently dropped. The row trains as the same conversation written as messages; a malformed history names the
    row."""
    alpaca = {"instruction": "3+3?", "output": "6", "system": "Be brief.", "history": [["Hi", "Hello!"], ["2+2?", "4"]]}
    messages = {"messages": [{"role": r, "content": c} for r, c in (
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4"),
        ("user", "3+3?"), ("assistant", "6"))]}
    built = [_build(tok, tmp_path / fmt, {"path": str(_write(tmp_path / f"{fmt}.jsonl", [row])), "format": fmt},
                    chat_template="qwen2.5")[0][0] for fmt, row in (("alpaca", alpaca), ("messages", messages))]
    assert built[0]["input_ids"] == built[1]["input_ids"] and built[0]["labels"] == built[1]["labels"]
    assert "Hello!" in _trained(tok, built[0])  # the history's answers are assistant turns like any other
    f = _write(tmp_path / "bad.jsonl", [{**alpaca, "history": [["only one"]]}])
    with pytest.raises(UserError, match=r"bad.jsonl: row 1 .*`history` must be a list of \[instruction, response\]"):
        _build(tok, tmp_path, {"path": str(f), "format": "alpaca"})


def test_roles_other_tools_write_train_as_the_four_roles(tok, tmp_path: Path) -> None:
    """OpenAI's `developer` and legacy `function_call` / `function`, Llama 3.1's `ipython`, Gemma's `model`: the
    same tokens and labels as the same conversation written with system / tool_calls / tool / assistant."""
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    canonical = {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": call}]},
        {"role": "tool", "name": "get_weather", "content": "18 C"}, {"role": "assistant", "content": "18 C."}]}
    aliased = {"messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": call},
        {"role": "function", "name": "get_weather", "content": "18 C"}, {"role": "model", "content": "18 C."}]}
    ipython = {"messages": [{**m, "role": "ipython"} if m["role"] == "tool" else m for m in canonical["messages"]]}
    built = [_build(tok, tmp_path / name, {"path": str(_write(tmp_path / f"{name}.jsonl", [row])),
                                           "format": "messages"}, chat_template="qwen2.5", max_length=1024)[0][0]
             for name, row in (("canonical", canonical), ("aliased", aliased), ("ipython", ipython))]
    assert built[0]["labels"] == built[1]["labels"] == built[2]["labels"]
    assert built[0]["input_ids"] == built[1]["input_ids"] == built[2]["input_ids"]
    assert "get_weather" in _trained(tok, built[1])  # the legacy call is trained as a tool call


@pytest.mark.parametrize("content,error", [
    ("[]", r"tools file .*empty.json holds no tool schemas"),
    ("{not json: [", r"tools file .*empty.json is not valid JSON or YAML"),
    ('[{"description": "no name"}]', r"tools file .*empty.json: tools\[0\] has no function name"),
])
def test_bad_tools_file_is_named(tok, tmp_path: Path, content: str, error: str) -> None:
    from tunekit.data.formats import read_tools

    read_tools.cache_clear()
    (tmp_path / "empty.json").write_text(content)
    row = json.loads((FIX / "tool_calls.jsonl").read_text())
    del row["tools"]
    spec = {"path": str(_write(tmp_path / "r.jsonl", [row])), "format": "messages", "tools": str(tmp_path / "empty.json")}
    with pytest.raises(UserError, match=error):
        _build(tok, tmp_path, spec, chat_template="qwen2.5", max_length=1024)


def test_missing_tools_file_fails_validate(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, data={"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages",
                                                     "tools": "nowhere/tools.json"}]})
    proc = run_cli("validate", recipe)
    assert proc.returncode == 2, proc.stderr
    assert "file not found: nowhere/tools.json" in proc.stderr and "the `tools:` file of dataset" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_template_that_cannot_render_tools_is_an_error_naming_it(tok, tmp_path: Path) -> None:
    spec = {"path": str(FIX / "tool_calls.jsonl"), "format": "messages"}
    with pytest.raises(UserError, match=r"tool_calls.jsonl: row 1.*data.chat_template `chatml`.*ignores them"):
        _build(tok, tmp_path, spec, chat_template="chatml", max_length=1024)
    row = json.loads((FIX / "tool_calls.jsonl").read_text())
    del row["tools"]
    f = _write(tmp_path / "calls.jsonl", [row])
    with pytest.raises(UserError, match=r"calls.jsonl: row 1.*`chatml` does not render tool calls.*`get_weather`"):
        _build(tok, tmp_path, {"path": str(f), "format": "messages"}, chat_template="chatml", max_length=1024)


def test_bad_tool_call_arguments_name_the_row(tok, tmp_path: Path) -> None:
    call = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{city: Paris"}}]}
    f = _write(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"}, call]}])
    with pytest.raises(UserError, match=r"d.jsonl: row 1.*messages\[1\].tool_calls\[0\].arguments is a string but "
                                        "not valid JSON"):
        _build(tok, tmp_path, {"path": str(f), "format": "messages"}, chat_template="qwen2.5")


# ------------------------------------------------------------------------------------- errors inside templates


def test_template_raise_exception_names_row_message_and_fix(tok, tmp_path: Path) -> None:
    template = tmp_path / "gemma2ish.jinja"
    template.write_text(NO_SYSTEM)
    f = _write(tmp_path / "d.jsonl", [_chat(("user", "a"), ("assistant", "b")),
                                      _chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."))])
    spec = {"path": str(f), "format": "messages"}
    with pytest.raises(UserError, match=r"d.jsonl: row 2 \(line 2\): data.chat_template `.*gemma2ish.jinja` raised "
                                        r"an error: System role not supported\..*system_role: merge_into_first_user"):
        _build(tok, tmp_path, spec, chat_template=str(template))
    train, _, _ = _build(tok, tmp_path, spec, chat_template=str(template), system_role="merge_into_first_user")
    texts = sorted(tok.decode(r["input_ids"]) for r in train)
    assert "<|im_start|>user\nBe brief.\n\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n" in texts


def test_undefined_special_token_in_template_is_named(tok, tmp_path: Path) -> None:
    template = tmp_path / "llama3ish.jinja"  # Llama-3's template starts with bos_token; this tokenizer has none
    template.write_text("{% set content = bos_token + messages[0]['content'] %}{{ content }}")
    f = _write(tmp_path / "d.jsonl", [_chat(("user", "a"), ("assistant", "b"))])
    with pytest.raises(UserError, match=r"d.jsonl: row 1 .*'bos_token' is undefined.*does not define"):
        _build(tok, tmp_path, {"path": str(f), "format": "messages"}, chat_template=str(template))


def test_template_error_exits_2_without_traceback(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text(NO_SYSTEM)
    f = _write(tmp_path / "d.jsonl", [_chat(("system", "s"), ("user", "a"), ("assistant", "b"))])
    recipe = tiny_recipe(tmp_path, data={"train": [{"path": str(f), "format": "messages"}],
                                         "chat_template": str(template)})
    proc = run_cli("preprocess", recipe)
    assert proc.returncode == 2, proc.stderr
    assert "d.jsonl: row 1 (line 1)" in proc.stderr and "System role not supported" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ JSON files, content parts


def test_json_object_is_one_row_or_wraps_the_rows(tok, tmp_path: Path) -> None:
    conv = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    one = tmp_path / "one.json"
    one.write_text(json.dumps(conv))
    train, _, _ = _build(tok, tmp_path, {"path": str(one), "format": "sharegpt"})
    assert [_trained(tok, r) for r in train] == ["Hello.<|im_end|>\n"]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [conv, conv], "version": 2}))
    train, _, _ = _build(tok, tmp_path, {"path": str(wrapped), "format": "sharegpt"})
    assert len(train) == 2
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"train": [conv], "test": [conv, conv]}))
    with pytest.raises(UserError, match=r"two.json: .*2 list fields \(train, test\).*set `field:`.*data.train\[\].field"):
        _build(tok, tmp_path, {"path": str(two), "format": "sharegpt"})
    train, _, _ = _build(tok, tmp_path, {"path": str(two), "format": "sharegpt", "field": "test"})
    assert len(train) == 2
    with pytest.raises(UserError, match=r"`field: dev` names no list.*train, test"):
        _build(tok, tmp_path, {"path": str(two), "format": "sharegpt", "field": "dev"})


def test_text_content_parts_are_joined_and_other_parts_refused(tok, tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "Look at"}, {"type": "text", "text": "this."}]
    row = {"messages": [{"role": "user", "content": parts},
                        {"role": "assistant", "content": [{"type": "text", "text": "Nice."}]}]}
    f = _write(tmp_path / "d.jsonl", [row])
    train, _, _ = _build(tok, tmp_path, {"path": str(f), "format": "messages"})
    assert tok.decode(train[0]["input_ids"]).startswith("<|im_start|>user\nLook at\nthis.<|im_end|>")
    assert _trained(tok, train[0]) == "Nice.<|im_end|>\n"
    image = {"type": "image_url", "image_url": {"url": "x.png"}}
    f = _write(tmp_path / "img.jsonl", [row, {"messages": [{"role": "user", "content": [parts[0], image]},
                                                           row["messages"][1]]}])
    with pytest.raises(UserError, match=r"img.jsonl: row 2 .*messages\[0\].content\[1\] is a `image_url` part"):
        _build(tok, tmp_path, {"path": str(f), "format": "messages"})


# ------------------------------------------------------------------------------------- per-message train flags


def test_per_message_train_flags_override_train_on(tok, tmp_path: Path) -> None:
    convo = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "bad answer", "train": False},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "good answer"}]
    weighted = [dict(m) for m in convo]
    weighted[1] = {"role": "assistant", "content": "bad answer", "weight": 0}
    f = _write(tmp_path / "d.jsonl", [{"messages": convo}, {"messages": weighted}])
    train, _, _ = _build(tok, tmp_path, {"path": str(f), "format": "messages"})
    assert [_trained(tok, r) for r in train] == ["good answer<|im_end|>\n"] * 2
    earlier = [dict(m) for m in convo]
    earlier[1]["train"] = True  # trained although train_on: last_assistant
    f = _write(tmp_path / "e.jsonl", [{"messages": earlier}])
    train, _, _ = _build(tok, tmp_path, {"path": str(f), "format": "messages"}, train_on="last_assistant")
    assert _trained(tok, train[0]) == "bad answer<|im_end|>\ngood answer<|im_end|>\n"
    with pytest.raises(UserError, match=r"d.jsonl: row 1.*train: false.*train_on is `all`"):
        _build(tok, tmp_path, {"path": str(tmp_path / "d.jsonl"), "format": "messages"}, train_on="all")
    user_flag = [{"role": "user", "content": "a", "train": True}, {"role": "assistant", "content": "b"}]
    f = _write(tmp_path / "u.jsonl", [{"messages": user_flag}])
    with pytest.raises(UserError, match=r"u.jsonl: row 1.*messages\[0\] is a user turn marked as trained"):
        _build(tok, tmp_path, {"path": str(f), "format": "messages"})


def test_sharegpt_per_turn_weights_are_honoured(tok, tmp_path: Path) -> None:
    """Open-Orca/SlimOrca writes `weight` on every ShareGPT turn (null on system, 0.0 on human, 1.0 or 0.0 on gpt):
    a gpt turn weighted 0 is context, as in the messages format (the flag was dropped, so it was trained)."""
    turns = [{"from": "system", "value": "Be kind.", "weight": None}, {"from": "human", "value": "a", "weight": 0.0},
             {"from": "gpt", "value": "bad answer", "weight": 0.0}, {"from": "human", "value": "c", "weight": 0.0},
             {"from": "gpt", "value": "good answer", "weight": 1.0}]
    f = _write(tmp_path / "s.jsonl", [{"conversations": turns}])
    train, _, _ = _build(tok, tmp_path, {"path": str(f), "format": "sharegpt"})
    assert _trained(tok, train[0]) == "good answer<|im_end|>\n"
    turns[1]["weight"] = 1
    f = _write(tmp_path / "u.jsonl", [{"conversations": turns}])
    with pytest.raises(UserError, match=r"u.jsonl: row 1.*conversations\[1\] is a user turn marked as trained"):
        _build(tok, tmp_path, {"path": str(f), "format": "sharegpt"})


# ------------------------------------------------------------------------------------------- preference rows


def test_preference_rows_are_checked_for_sense(tok, tmp_path: Path) -> None:
    ok = {"prompt": "2+2?", "completion": "4", "label": True}
    swapped = {"prompt": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
               "completion": [{"role": "user", "content": "thanks"}], "label": True}
    f = _write(tmp_path / "k.jsonl", [ok, swapped])
    with pytest.raises(UserError, match=r"k.jsonl: row 2 .*`prompt` must end with the user \(or tool\) turn.*swapped"):
        _build(tok, tmp_path, {"path": str(f), "format": "unpaired_preference"})
    swapped["prompt"] = swapped["prompt"][:1]
    f = _write(tmp_path / "k.jsonl", [ok, swapped])
    with pytest.raises(UserError, match=r"k.jsonl: row 2 .*`completion` must start with an assistant turn"):
        _build(tok, tmp_path, {"path": str(f), "format": "unpaired_preference"})


def test_preference_template_errors_name_the_row(tok, tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text(NO_SYSTEM)
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"},
            {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}], "chosen": "b",
             "rejected": "c"}]
    f = _write(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError, match=r"p.jsonl: row 2 .*System role not supported"):
        _build(tok, tmp_path, {"path": str(f), "format": "preference"}, chat_template=str(template))
    assert tok.chat_template == NO_SYSTEM  # the recipe's template is the one TRL will render with
    # the fix the error names works for preference rows too (it was applied to SFT rows only)
    train, _, _ = _build(tok, tmp_path, {"path": str(f), "format": "preference", "system": "Be brief."},
                         chat_template=str(template), system_role="merge_into_first_user")
    assert sorted(r["prompt"][0]["content"] for r in train) == ["Be brief.\n\na", "s\n\na"]
    assert all([m["role"] for m in r["prompt"]] == ["user"] for r in train)


def _pairs(tok, train) -> dict:  # noqa: ANN001
    """The DPO pairs as the trainer gets them, by the row's question: (prompt text, chosen text)."""
    from tunekit.data.pair_tokens import exact_pairs

    pairs = exact_pairs(train, tok, "dpo")
    return {r["prompt"][-1]["content"]: (tok.decode(p["prompt_ids"]), tok.decode(p["chosen_ids"]))
            for r, p in zip(train, pairs)}


def test_preference_rows_keep_their_system_text_and_tool_schemas(tok, tmp_path: Path) -> None:
    """What a preference or KTO row gives beside prompt and answers reaches the prompt the trainer scores after:
    a `system` column (orca_dpo_pairs has one), else the dataset's `system:`, and tool schemas (a `tools` column,
    else the dataset's `tools:` file), as SFT rows' do. Before, all of these were silently ignored."""
    schemas = json.loads((FIX / "tool_calls.jsonl").read_text())["tools"]
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    rows = [{"question": "2+2?", "chosen": "4", "rejected": "5", "system": "Answer in digits."},
            {"question": "Weather in Paris?", "chosen": [call], "rejected": "No idea.", "tools": schemas},
            {"question": "3+3?", "chosen": "6", "rejected": "7"}]
    spec = {"path": str(_write(tmp_path / "p.jsonl", rows)), "format": "preference", "columns": {"prompt": "question"},
            "system": "Be brief."}
    train, _, _ = _build(tok, tmp_path, spec, chat_template="qwen2.5")
    assert {r["prompt"][-1]["content"]: r["prompt"][0]["content"] for r in train} == {
        "2+2?": "Answer in digits.", "Weather in Paris?": "Be brief.", "3+3?": "Be brief."}
    pairs = _pairs(tok, train)
    assert "Answer in digits." in pairs["2+2?"][0] and "get_weather" not in pairs["2+2?"][0]
    prompt, chosen = pairs["Weather in Paris?"]
    assert '"name": "get_weather"' in prompt and "Current weather" in prompt  # the schema, in the prompt
    assert chosen.startswith("<tool_call>")
    (tmp_path / "tools.json").write_text(json.dumps(schemas))
    spec = {**spec, "tools": str(tmp_path / "tools.json")}
    train, _, _ = _build(tok, tmp_path, spec, chat_template="qwen2.5")
    assert all("Current weather" in p for p, _ in _pairs(tok, train).values())  # the file reaches every row
    with pytest.raises(UserError, match=r"p.jsonl: row 2 .*has tool schemas \(`tools`\) but .*chatml.* ignores them"):
        _build(tok, tmp_path, {**spec, "tools": None}, chat_template="chatml")


def test_a_system_column_is_kept_by_every_format_that_has_a_prompt() -> None:
    """A row's `system` column, else the dataset's `system:`, in front of the prompt (never a second one); a column
    differing from the row's own system message is an error (one of them was silently dropped)."""
    from tunekit.data.formats import messages_format, prompt_completion_format
    from tunekit.data.preference import prompt_answer_row, unpaired_row
    from tunekit.data.schema import DatasetSpec

    def spec(fmt: str) -> DatasetSpec:
        return DatasetSpec(path="x.jsonl", format=fmt, system="Default.")

    own = {"system": "Own."}
    assert prompt_completion_format({"prompt": "q", "completion": "a", **own}, spec("prompt_completion"), "x")[0] == {
        "role": "system", "content": "Own."}
    assert prompt_answer_row({"question": "q", "answer": "1", "solution": "s #### 1"}, spec("prompt_answer"),
                             "x")["prompt"][0] == {"role": "system", "content": "Default."}
    kto = unpaired_row({"prompt": [{"role": "system", "content": "Own."}, {"role": "user", "content": "q"}],
                        "completion": "a", "label": True, **own}, spec("unpaired_preference"), "x")
    assert [m["role"] for m in kto["prompt"]] == ["system", "user"] and kto["prompt"][0]["content"] == "Own."
    mine = {"prompt": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "q"}], "completion": "a",
            "label": True}
    assert unpaired_row(mine, spec("unpaired_preference"), "x")["prompt"][0]["content"] == "Mine."  # `system:` a default
    with pytest.raises(UserError, match=r"x: the row has a `system` column and a different system message"):
        unpaired_row({**mine, **own}, spec("unpaired_preference"), "x")
    with pytest.raises(UserError, match=r"x: the row has a `system` column and a different system message"):
        messages_format({"messages": [mine["prompt"][0], *mine["prompt"][1:], {"role": "assistant", "content": "a"}],
                         **own}, spec("messages"), "x")


def test_whole_conversations_as_chosen_and_rejected_share_their_prompt(tok, tmp_path: Path) -> None:
    """Peer datasets write pairs as whole conversations: HuggingFaceH4/ultrafeedback_binarized has a `prompt` string
    and `chosen: [user, assistant]`; trl-lib/hh-rlhf-helpful-base has no prompt at all. The prompt is the messages
    both share, the answers what follows (TRL's extract_prompt); before, every such row was refused."""
    def turns(*pairs: tuple[str, str]) -> list[dict]:
        return [{"role": r, "content": c} for r, c in pairs]

    rows = [{"prompt": "2+2?", "chosen": turns(("user", "2+2?"), ("assistant", "4")), "score_chosen": 9.0,
             "rejected": turns(("user", "2+2?"), ("assistant", "5"))},
            {"chosen": turns(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "3+3?"),
                             ("assistant", "6")),
             "rejected": turns(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "3+3?"),
                               ("assistant", "7"), ("user", "Sure?"), ("assistant", "Yes."))}]
    train, _, _ = _build(tok, tmp_path, {"path": str(_write(tmp_path / "p.jsonl", rows)), "format": "preference"})
    got = {r["prompt"][-1]["content"]: r for r in train}
    assert [m["content"] for m in got["2+2?"]["prompt"]] == ["2+2?"]
    assert [m["content"] for m in got["2+2?"]["chosen"]] == ["4"]
    assert [m["content"] for m in got["3+3?"]["prompt"]] == ["Be kind.", "Hi", "Hello!", "3+3?"]
    assert [m["content"] for m in got["3+3?"]["chosen"]] == ["6"]
    assert [m["content"] for m in got["3+3?"]["rejected"]] == ["7", "Sure?", "Yes."]
    # Anthropic/hh-rlhf: whole transcripts as text, no prompt column (it was "missing column `prompt`")
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 3+3?\n\nAssistant: 6",
          "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 3+3?\n\nAssistant: 7"}
    train, _, _ = _build(tok, tmp_path, {"path": str(_write(tmp_path / "hh.jsonl", [hh])), "format": "preference"})
    assert [(m["role"], m["content"]) for m in train[0]["prompt"]] == [("user", "Hi"), ("assistant", "Hello!"),
                                                                      ("user", "3+3?")]
    assert [m["content"] for m in train[0]["chosen"]] == ["6"] and [m["content"] for m in train[0]["rejected"]] == ["7"]
    # the same transcripts stripped (no leading blank lines) are read alike (they were "missing column `prompt`")
    stripped = {k: v.lstrip() for k, v in hh.items()}
    again, _, _ = _build(tok, tmp_path, {"path": str(_write(tmp_path / "hs.jsonl", [stripped])), "format": "preference"})
    assert again[0] == train[0]
    # Dahoas/full-hh-rlhf: the transcript up to `Assistant:` in a `prompt` column, answers after a space; it was one
    # user turn with the markers in it (and the space trained); KTO rows of that shape alike
    dahoas = {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 3+3?\n\nAssistant:", "chosen": " 6",
              "rejected": " 7"}
    again, _, _ = _build(tok, tmp_path, {"path": str(_write(tmp_path / "d.jsonl", [dahoas])), "format": "preference"})
    assert again[0] == train[0]
    kto = {"prompt": dahoas["prompt"], "completion": " 6", "label": True}
    unpaired, _, _ = _build(tok, tmp_path, {"path": str(_write(tmp_path / "k.jsonl", [kto])),
                                            "format": "unpaired_preference"})
    assert unpaired[0]["prompt"] == train[0]["prompt"] and unpaired[0]["completion"] == train[0]["chosen"]
    # argilla/distilabel-capybara-dpo: `prompt` is the conversation's opening question, the pair a later turn's
    capybara = {**rows[1], "prompt": "Hi"}
    train, _, _ = _build(tok, tmp_path, {"path": str(_write(tmp_path / "c.jsonl", [capybara])), "format": "preference"})
    assert train[0]["prompt"] == got["3+3?"]["prompt"] and train[0]["chosen"] == got["3+3?"]["chosen"]
    for bad, error in (
            ({**rows[0], "prompt": "2+3?"}, r"row 1 .*`prompt` is not the conversation that `chosen` and `rejected`"),
            ({**rows[1], "prompt": "Hello!"}, r"row 1 .*`prompt` is not the conversation"),  # an assistant turn
            ({"chosen": turns(("user", "a"), ("assistant", "b")), "rejected": turns(("user", "c"), ("assistant", "d"))},
             r"row 1 .*share no first message"),
            ({"chosen": turns(("user", "a"), ("assistant", "b"), ("user", "c")),
              "rejected": turns(("user", "a"), ("assistant", "b"), ("user", "d"))},
             r"row 1 .*first differ at message 3, a user turn"),
            ({"chosen": "4", "rejected": "5"}, r"row 1 .*missing column `prompt`"),
            # identical whole conversations: said so (it was "one contains the other ... give a prompt")
            ({"chosen": turns(("user", "a"), ("assistant", "b")), "rejected": turns(("user", "a"), ("assistant", "b"))},
             r"row 1 .*identical conversations.*drop_invalid_pairs"),
            ({"prompt": "a", "chosen": " ", "rejected": "b"}, r"row 1 .*`chosen` is empty.*drop_invalid_pairs")):
        f = _write(tmp_path / "bad.jsonl", [bad])
        with pytest.raises(UserError, match=error):
            _build(tok, tmp_path, {"path": str(f), "format": "preference"})


def test_gsm8k_rows_as_they_ship_are_prompt_answer_rows() -> None:
    """openai/gsm8k's rows are {question, answer} with the reasoning path in `answer`, ending in `#### N`: the path
    is the solution and N the answer (they needed converting); a mapped `solution` column must exist."""
    from tunekit.data.preference import prompt_answer_row
    from tunekit.data.schema import DatasetSpec

    row = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}
    got = prompt_answer_row(row, DatasetSpec(path="g.jsonl", format="prompt_answer"), "g.jsonl:1")
    assert (got["answer"], got["solution"]) == ("7", row["answer"])
    with pytest.raises(UserError, match=r"g.jsonl:1: missing column `cot`"):
        prompt_answer_row(row, DatasetSpec(path="g.jsonl", format="prompt_answer", columns={"solution": "cot"}),
                          "g.jsonl:1")
    with pytest.raises(UserError, match=r"g.jsonl:1: missing column `solution`"):
        prompt_answer_row({**row, "answer": "7"}, DatasetSpec(path="g.jsonl", format="prompt_answer"), "g.jsonl:1")
    # `#### ` with nothing after it: the column is not empty, its marked answer is (it said "`answer` must be a
    # non-empty string ..., found ''")
    with pytest.raises(UserError, match=r"g.jsonl:1: the text after `####` \(the answer\) is empty"):
        prompt_answer_row({**row, "answer": "3 + 4 = 7\n#### "}, DatasetSpec(path="g.jsonl", format="prompt_answer"),
                          "g.jsonl:1")


def test_an_empty_prompt_is_named_by_the_column_it_came_from() -> None:
    """orca_dpo_pairs mapped with `columns: {prompt: question}` and an empty question said "`prompt` is empty"."""
    from tunekit.data.preference import preference_row
    from tunekit.data.schema import DatasetSpec

    spec = DatasetSpec(path="o.jsonl", format="preference", columns={"prompt": "question"})
    with pytest.raises(UserError, match=r"o.jsonl:1: `question` \(the prompt\) is empty"):
        preference_row({"question": " ", "chosen": "a", "rejected": "b"}, spec, "o.jsonl:1")


def test_math_rows_as_they_ship_and_solutions_that_disagree_with_their_answer() -> None:
    """hendrycks MATH / NuminaMath rows are {problem, solution} with the answer boxed: the boxed text is the answer
    (they needed converting). A solution whose marked final answer is not the row's answer (`#### 9` for 8, a
    boxed 1/4 for 3/4) was accepted: the warm-up taught an answer the reward scores wrong."""
    from tunekit.data.preference import prompt_answer_row
    from tunekit.data.schema import DatasetSpec

    spec = DatasetSpec(path="m.jsonl", format="prompt_answer", columns={"question": "problem"})
    row = {"problem": "What is 1/2 + 1/4?", "solution": r"$\frac{2}{4}+\frac14 = \boxed{\frac{3}{4}}$.",
           "level": "Level 1"}
    got = prompt_answer_row(row, spec, "m.jsonl:1")
    assert (got["answer"], got["solution"]) == (r"\frac{3}{4}", row["solution"])
    plain = DatasetSpec(path="p.jsonl", format="prompt_answer")
    for answer, solution in (("8", "4 + 5 = 9\n#### 9"), (r"\frac{3}{4}", r"so \boxed{\frac{1}{4}}"),
                             ("Paris", r"\boxed{\text{Rome}}")):
        with pytest.raises(UserError, match="p.jsonl:1: the solution ends in .* but the answer is"):
            prompt_answer_row({"question": "q", "answer": answer, "solution": solution}, plain, "p.jsonl:1")
    for answer, solution in (("1234", "#### 1,234"), ("0.75", r"\boxed{\dfrac{3}{4}}"), ("Paris", r"\boxed{paris}"),
                             ("Paris", r"\boxed{\text{Paris}}"),
                             ("7", "3 + 4 = 7")):  # no marked answer: nothing to check
        prompt_answer_row({"question": "q", "answer": answer, "solution": solution}, plain, "p.jsonl:1")


def test_tools_on_a_format_that_cannot_use_them_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tools.json").write_text("[]")
    for fmt in ("text", "prompt_answer"):  # alpaca rows may carry tools (LLaMA-Factory)
        with pytest.raises(ValueError, match=f"format `{fmt}` has no tool calls"):
            DataConfig(train=[{"path": "x.jsonl", "format": fmt, "tools": str(tmp_path / "tools.json")}])


def test_arrow_rows_keep_a_key_that_only_later_rows_have(tmp_path: Path) -> None:
    """Preference rows carry `tools` only when they have some: the typed columns are those of every key of any row
    (null where a row lacks it), so tools first seen in a later batch are not dropped."""
    import datasets

    from tunekit.data import arrow_rows

    rows = [{"prompt": "a"}] * (arrow_rows.BATCH + 3) + [{"prompt": "b", "tools": "[1]"}]
    path = tmp_path / "rows.arrow"
    writer = arrow_rows.RowWriter(tmp_path / "json.arrow", arrow_rows.JSON_ROW)
    for r in rows:
        writer.add({"row": json.dumps(r).encode()})
    writer.close()
    enc = arrow_rows.Encoded([tmp_path / "json.arrow"], arrow_rows.JSON_ROW)
    arrow_rows.write_json_rows(enc, list(range(len(rows))), path)
    got = datasets.Dataset.from_file(str(path))
    assert got.column_names == ["prompt", "tools"]
    assert got[len(rows) - 1]["tools"] == "[1]" and got[0]["tools"] is None


# ------------------------------------------------------------------------------ templates rewriting earlier turns

# DeepSeek-R1-like: earlier assistant turns lose their reasoning (the text up to </think>), the last keeps it.
STRIPS_REASONING = ("{% for m in messages %}{% set c = m['content'] %}"
                    "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
                    "{{ '<|im_start|>' + m['role'] + '\n' + c + '<|im_end|>\n' }}{% endfor %}"
                    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_multi_turn_per_turn_for_templates_rewriting_earlier_turns(tok, tmp_path: Path) -> None:
    template = tmp_path / "r1ish.jinja"
    template.write_text(STRIPS_REASONING)
    convo = _chat(("user", "2+2?"), ("assistant", "<think>add</think>4"), ("user", "3+3?"),
                  ("assistant", "<think>add again</think>6"))
    f = _write(tmp_path / "d.jsonl", [convo, _chat(("user", "hi"), ("assistant", "hello"))])
    spec = {"path": str(f), "format": "messages"}
    with pytest.raises(UserError, match=r"d.jsonl: row 1 .*prefixes consistently.*multi_turn: per_turn"):
        _build(tok, tmp_path, spec, chat_template=str(template), multi_turn="consistent")
    for mode in ("auto", "per_turn"):
        train, _, stats = _build(tok, tmp_path, spec, chat_template=str(template), multi_turn=mode)
        texts = sorted((tok.decode(r["input_ids"]), _trained(tok, r)) for r in train)
        # Each assistant turn is trained once, with the context the model sees when it writes that turn.
        assert texts == sorted([
            ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>add</think>4<|im_end|>\n",
             "<think>add</think>4<|im_end|>\n"),
            ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n"
             "<|im_start|>assistant\n<think>add again</think>6<|im_end|>\n", "<think>add again</think>6<|im_end|>\n"),
            ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n", "hello<|im_end|>\n"),
        ])
        per = stats["train"]["datasets"][str(f)]
        assert (per["rows_in"], per["rows_out"], per["split_rows"], per["expanded"]) == (2, 3, 1, 1)
    # A consistent template is never split under auto.
    _, _, stats = _build(tok, tmp_path, spec, chat_template="chatml", multi_turn="auto")
    assert stats["train"]["split_rows"] == 0 and stats["train"]["rows_out"] == 2


# Qwen3-like: reasoning_content rendered as a <think> block, only for assistant turns after the last user turn.
RENDERS_REASONING = (
    "{% set ns = namespace(last_user=0) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{% if m['role'] == 'assistant' and m.reasoning_content and loop.index0 > ns.last_user %}"
    "{{ '<think>\n' + m.reasoning_content + '\n</think>\n\n' }}{% endif %}{{ m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_reasoning_content_is_rendered_and_trained_or_refused(tok, tmp_path: Path) -> None:
    template = tmp_path / "qwen3ish.jinja"
    template.write_text(RENDERS_REASONING)
    row = {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
                        {"role": "user", "content": "3+3?"},
                        {"role": "assistant", "content": "6", "thinking": "three and three"}]}
    f = _write(tmp_path / "d.jsonl", [row])
    train, _, stats = _build(tok, tmp_path, {"path": str(f), "format": "messages"}, chat_template=str(template))
    trained = sorted(_trained(tok, r) for r in train)  # earlier reasoning is dropped in context: split per turn
    assert trained == ["<think>\nthree and three\n</think>\n\n6<|im_end|>\n", "<think>\ntwo and two\n</think>\n\n4<|im_end|>\n"]
    assert stats["train"]["split_rows"] == 1
    with pytest.raises(UserError, match=r"d.jsonl: row 1.*`chatml` does not render the assistant turn's "
                                        "`reasoning_content`"):
        _build(tok, tmp_path, {"path": str(f), "format": "messages"}, chat_template="chatml")
