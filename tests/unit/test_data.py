"""Data stage: every format and source on the shipped fixtures, mixtures, length policy, row-named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.data.build import NOT_SELECTED, build_datasets
from tunekit.data.schema import DataConfig
from tunekit.errors import UserError
from tunekit.model.builtin import TOKENIZER_DIR

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "data"


@pytest.fixture()
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _build(tok, *specs: dict, **options):
    return build_datasets(DataConfig(train=list(specs), **options), tok, seed=0)


def _trained(tok, row: dict) -> str:
    return tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])


def _texts(tok, ds) -> list[str]:
    return sorted(tok.decode(r["input_ids"]) for r in ds)


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_alpaca_with_input_and_system(tok) -> None:
    train, _, stats = _build(tok, {"path": str(FIX / "alpaca.jsonl"), "format": "alpaca", "system": "Be kind."})
    texts = _texts(tok, train)
    assert stats["train"]["rows_out"] == 3
    assert ("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nAdd the numbers.\n\n2 and 3<|im_end|>\n"
            "<|im_start|>assistant\n5<|im_end|>\n") in texts
    # A row's own system column wins over the dataset default; an empty `input` adds nothing.
    assert ("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
            "<|im_start|>assistant\nBlue.<|im_end|>\n") in texts


def test_alpaca_column_mapping(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "d.jsonl", [{"question": "Capital of France?", "answer": "Paris."}])
    train, _, _ = _build(tok, {"path": str(f), "format": "alpaca", "columns": {"instruction": "question",
                                                                               "output": "answer"}})
    assert _trained(tok, train[0]) == "Paris.<|im_end|>\n"


def test_column_mapping_that_cannot_be_read_is_an_error(tok, tmp_path: Path) -> None:
    """Dolly with `input: ctx` (the column is `context`) lost every context paragraph without a word, and a key the
    format does not read (`outptu`) was accepted; so were `roles:` on messages rows and `system:` on text rows."""
    from pydantic import ValidationError

    f = _write(tmp_path / "dolly.jsonl", [{"instruction": "When?", "context": "In 2000.", "response": "2000",
                                            "category": "closed_qa"}])
    with pytest.raises(UserError, match="columns maps `input` to `ctx`, but no row has a `ctx` column.*context"):
        _build(tok, {"path": str(f), "format": "alpaca", "columns": {"input": "ctx", "output": "response"}})
    train, _, _ = _build(tok, {"path": str(f), "format": "alpaca", "columns": {"input": "context", "output": "response"}})
    assert "In 2000." in tok.decode(train[0]["input_ids"])
    bad = [({"format": "alpaca", "columns": {"outptu": "response"}}, "`outptu` is not a column.*did you mean `output`"),
           ({"format": "messages", "roles": {"prompter": "user"}}, "`roles:` maps sharegpt"),
           ({"format": "text", "system": "Be brief."}, "`system:` is a system prompt for conversations")]
    for spec, error in bad:
        with pytest.raises(ValidationError, match=error):
            DataConfig(train=[{"path": str(f), **spec}])


def test_sharegpt_json_array_with_role_map(tok) -> None:
    train, _, _ = _build(tok, {"path": str(FIX / "sharegpt.json"), "format": "sharegpt", "roles": {"bot": "assistant"}})
    trained = sorted(_trained(tok, r) for r in train)
    assert trained == ["4.<|im_end|>\n6.<|im_end|>\n", "Hello! How can I help?<|im_end|>\n"]


def test_sharegpt_unknown_role_is_named(tok) -> None:
    with pytest.raises(UserError, match=r"sharegpt.json: row 1: conversations\[1\].from is 'bot'.*roles:"):
        _build(tok, {"path": str(FIX / "sharegpt.json"), "format": "sharegpt"})


def test_messages_with_system_and_tool_turns(tok) -> None:
    train, _, _ = _build(tok, {"path": str(FIX / "tools.jsonl"), "format": "messages"})
    assert "<|im_start|>tool\n144<|im_end|>" in tok.decode(train[0]["input_ids"])
    assert _trained(tok, train[0]) == "calc(12*12)<|im_end|>\n12 times 12 is 144.<|im_end|>\n"


def test_prompt_completion_from_csv_with_column_mapping(tok) -> None:
    train, _, _ = _build(tok, {"path": str(FIX / "qa.csv"), "format": "prompt_completion",
                               "columns": {"prompt": "question", "completion": "answer"}})
    assert sorted(_trained(tok, r) for r in train) == ["2<|im_end|>\n", "4<|im_end|>\n"]
    assert any("What is 2, plus 2?" in t for t in _texts(tok, train))


def test_conversational_prompt_completion_trains_only_the_completion(tok, tmp_path: Path) -> None:
    """TRL's conversational prompt-completion rows (a `prompt` list of messages, a `completion` list or string):
    the same tokens as the `messages` row of the whole conversation, and labels on the completion only (the
    prompt's assistant turn is context). Before, every such row was refused (`prompt` must be a string)."""
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    rows = [{"prompt": prompt, "completion": [{"role": "assistant", "content": "4"}]},
            {"prompt": prompt, "completion": "4"}]
    f = _write(tmp_path / "pc.jsonl", rows)
    train, _, _ = _build(tok, {"path": str(f), "format": "prompt_completion"})
    whole, _, _ = _build(tok, {"path": str(_write(tmp_path / "m.jsonl", [
        {"messages": [*prompt, {"role": "assistant", "content": "4"}]}])), "format": "messages"})
    for row in train:
        assert row["input_ids"] == whole[0]["input_ids"]
        assert _trained(tok, row) == "4<|im_end|>\n"
    assert "Hello!" in _trained(tok, whole[0])  # the messages row trains every assistant turn
    for bad, error in (({"prompt": prompt[:3], "completion": "4"}, r"prompt ends with a `assistant` turn"),
                       ({"prompt": prompt, "completion": [{"role": "user", "content": "4"}]}, r"completion starts with a `user` turn"),
                       ({"prompt": [], "completion": "4"}, r"`prompt` is an empty list")):
        with pytest.raises(UserError, match=rf"bad.jsonl: row 1.*{error}"):
            _build(tok, {"path": str(_write(tmp_path / "bad.jsonl", [bad])), "format": "prompt_completion"})


def test_text_from_parquet_trains_every_token_and_ends_with_eos(tok) -> None:
    train, _, stats = _build(tok, {"path": str(FIX / "text.parquet"), "format": "text"})
    row = train[0]
    assert row["input_ids"][-1] == tok.eos_token_id
    assert row["labels"][0] == -100 and row["labels"][1:] == row["input_ids"][1:]
    assert stats["train"]["rows_out"] == 5


def test_arrow_file_saved_dir_and_glob_sources(tok) -> None:
    arrow, _, _ = _build(tok, {"path": str(FIX / "messages.arrow"), "format": "messages"})
    saved, _, _ = _build(tok, {"path": str(FIX / "saved"), "format": "messages"})
    glob, _, _ = _build(tok, {"path": str(FIX / "parts" / "part-*.jsonl"), "format": "messages"})
    assert (len(arrow), len(saved), len(glob)) == (4, 3, 4)
    assert _texts(tok, arrow) == _texts(tok, glob)


def test_glob_matching_nothing_is_an_error(tok, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="matches no files"):
        _build(tok, {"path": str(tmp_path / "*.jsonl"), "format": "messages"})


def test_mixture_by_samples_and_weight_counts_every_row(tok) -> None:
    a = {"path": str(FIX / "messages.arrow"), "format": "messages"}  # 4 rows
    b = {"path": str(FIX / "alpaca.jsonl"), "format": "alpaca"}  # 3 rows
    train, _, stats = _build(tok, {**a, "samples": 2}, {**b, "samples": 7})
    per = stats["train"]["datasets"]
    assert len(train) == 9
    assert per[a["path"]]["dropped"] == {NOT_SELECTED: 2}
    assert per[b["path"]]["repeated"] == 4 and per[b["path"]]["rows_out"] == 7
    train, _, stats = _build(tok, {**a, "weight": 3.0}, {**b, "weight": 1.0})
    per = stats["train"]["datasets"]
    assert (per[a["path"]]["rows_out"], per[b["path"]]["rows_out"]) == (5, 2)  # 7 rows split 3:1 (rounded)


def test_eval_fraction_holds_out_rows(tok) -> None:
    train, ev, stats = _build(tok, {"path": "builtin:quickstart/train.jsonl", "format": "messages"},
                              eval_fraction=0.1, max_length=128)
    assert len(ev) == 200 and len(train) == 1800 and stats["held_out_for_eval"] == 200


def test_malformed_json_names_file_and_line(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, "", "{not json"])
    with pytest.raises(UserError, match=rf"{f}:3: malformed JSON"):
        _build(tok, {"path": str(f), "format": "prompt_completion"})


def test_missing_column_names_row_expected_and_found(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a", "answer": "b"}])
    with pytest.raises(UserError, match=r"row 2 \(line 2\): missing column `completion`.*found: answer, prompt"):
        _build(tok, {"path": str(f), "format": "prompt_completion"})


def test_wrong_type_names_the_row(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": 3}])
    with pytest.raises(UserError, match=r"d.jsonl: row 2 .*`output` must be a string, found int"):
        _build(tok, {"path": str(f), "format": "alpaca"})


def test_missing_data_file_is_named(tok, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found: .*nope.jsonl"):
        _build(tok, {"path": str(tmp_path / "nope.jsonl"), "format": "messages"})


def test_length_policy_counts_truncated_and_dropped(tok, tmp_path: Path) -> None:
    long = {"prompt": "short", "completion": "word " * 200}
    short = {"prompt": "short", "completion": "ok"}
    f = _write(tmp_path / "d.jsonl", [long, short, short])
    spec = {"path": str(f), "format": "prompt_completion"}
    train, _, stats = _build(tok, spec, max_length=32)
    assert stats["train"]["truncated"] == 1 and len(train) == 3 and max(len(r["input_ids"]) for r in train) == 32
    train, _, stats = _build(tok, spec, max_length=32, length_policy="drop")
    assert stats["train"]["dropped"] == {"longer than max_length=32": 1} and len(train) == 2


def test_prompt_filling_max_length_is_an_error_naming_the_row(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "d.jsonl", [{"prompt": "ok", "completion": "ok"}, {"prompt": "word " * 200, "completion": "ok"}])
    with pytest.raises(UserError, match=r"row 2 \(line 2\) \(dataset .*d.jsonl\): no trained tokens remain"):
        _build(tok, {"path": str(f), "format": "prompt_completion"}, max_length=32)
    train, _, stats = _build(tok, {"path": str(f), "format": "prompt_completion"}, max_length=32, drop_untrained=True)
    assert len(train) == 1 and stats["train"]["dropped"] == {"no trained tokens left after truncation": 1}


def test_empty_after_filtering_is_an_error(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "word " * 100}])
    with pytest.raises(UserError, match=r"training set is empty after filtering.*longer than max_length=16"):
        _build(tok, {"path": str(f), "format": "prompt_completion"}, max_length=16, length_policy="drop")


def test_empty_file_is_an_error(tok, tmp_path: Path) -> None:
    f = _write(tmp_path / "d.jsonl", [])
    with pytest.raises(UserError, match="the dataset is empty"):
        _build(tok, {"path": str(f), "format": "messages"})


def test_hub_dataset_goes_through_load_dataset_and_errors_name_it(tok) -> None:
    # Tests run offline (HF_HUB_OFFLINE=1): the real datasets.load_dataset is called and refuses politely.
    spec = {"path": "hub:someorg/nodata", "format": "messages", "subset": "x", "revision": "abc"}
    with pytest.raises(UserError, match=r"hub dataset `someorg/nodata` \(subset=x, split=train, revision=abc\)"):
        _build(tok, spec)
