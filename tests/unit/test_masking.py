"""Loss masks from the rendered conversation, token by token, for several chat templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunekit.data.build import build_datasets
from tunekit.data.masking import tokenize_with_mask
from tunekit.data.schema import DataConfig
from tunekit.data.templates import BUILTIN_TEMPLATES, load_template
from tunekit.errors import UserError
from tunekit.model.builtin import TOKENIZER_DIR

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "2 plus 2 is 4."},
    {"role": "user", "content": "And 3 times 3?"},
    {"role": "assistant", "content": "3 times 3 is 9."},
]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture()
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def expected(tok, pieces: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    """Hand-written (text, trained) pieces -> the token ids and mask they must produce."""
    ids, mask = [], []
    for text, trained in pieces:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [trained] * len(piece)
    return ids, mask


def test_chatml_multi_turn_mask_token_by_token(tok) -> None:
    enc = tokenize_with_mask(tok, CONVO, "assistant", "test")
    ids, mask = expected(tok, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n"
         "<|im_start|>assistant\n", 0),
        ("2 plus 2 is 4.<|im_end|>\n", 1),
        ("<|im_start|>user\nAnd 3 times 3?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("3 times 3 is 9.<|im_end|>\n", 1),
    ])
    assert enc["input_ids"] == ids
    assert enc["mask"] == mask
    trained = [t for t, m in zip(ids, mask) if m]
    assert trained.count(tok.eos_token_id) == 2  # EOS after each trained turn


def test_llama3_multi_turn_mask_token_by_token(tok) -> None:
    # A llama3-like tokenizer: the template's header/end-of-turn strings are special tokens, EOS is <|eot_id|>.
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS, "eos_token": "<|eot_id|>"})
    tok.chat_template = load_template("llama3")
    head = "<|start_header_id|>{}<|end_header_id|>\n\n"
    enc = tokenize_with_mask(tok, CONVO, "assistant", "test")
    ids, mask = expected(tok, [
        ("<|begin_of_text|>" + head.format("system") + "Be brief.<|eot_id|>" + head.format("user")
         + "What is 2 plus 2?<|eot_id|>" + head.format("assistant"), 0),
        ("2 plus 2 is 4.<|eot_id|>", 1),
        (head.format("user") + "And 3 times 3?<|eot_id|>" + head.format("assistant"), 0),
        ("3 times 3 is 9.<|eot_id|>", 1),
    ])
    assert enc["input_ids"] == ids
    assert enc["mask"] == mask
    assert [t for t, m in zip(ids, mask) if m].count(tok.eos_token_id) == 2


def test_last_assistant_trains_only_the_final_turn(tok) -> None:
    enc = tokenize_with_mask(tok, CONVO, "last_assistant", "test")
    ids, mask = expected(tok, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n"
         "<|im_start|>assistant\n2 plus 2 is 4.<|im_end|>\n<|im_start|>user\nAnd 3 times 3?<|im_end|>\n"
         "<|im_start|>assistant\n", 0),
        ("3 times 3 is 9.<|im_end|>\n", 1),
    ])
    assert (enc["input_ids"], enc["mask"]) == (ids, mask)


def test_train_on_all(tok) -> None:
    assert all(tokenize_with_mask(tok, CONVO, "all", "test")["mask"])


# Real family templates that rewrite earlier turns (trained per turn) or have no system role: test_data_families.py
PER_TURN_OR_NO_SYSTEM = {"qwen3", "mistral-v0.3", "deepseek-v3", "deepseek-r1-distill", "gemma2"}


@pytest.mark.parametrize("name", sorted(set(BUILTIN_TEMPLATES) - PER_TURN_OR_NO_SYSTEM))
def test_every_builtin_template_masks_answers_and_never_the_prompt(tok, name: str) -> None:
    tok.chat_template = load_template(name)
    enc = tokenize_with_mask(tok, CONVO, "assistant", name)
    trained = tok.decode([t for t, m in zip(enc["input_ids"], enc["mask"]) if m])
    untrained = tok.decode([t for t, m in zip(enc["input_ids"], enc["mask"]) if not m])
    assert "2 plus 2 is 4." in trained and "3 times 3 is 9." in trained
    assert "What is 2 plus 2?" in untrained and "And 3 times 3?" in untrained and "Be brief." in untrained


def test_template_without_end_of_turn_is_an_error(tok) -> None:
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}"
    with pytest.raises(UserError, match="writes nothing after an assistant turn"):
        tokenize_with_mask(tok, CONVO, "assistant", "row 1")


def test_template_with_inconsistent_prefixes_is_an_error(tok) -> None:
    tok.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] + '<|im_end|>' }}{% endfor %}"
    with pytest.raises(UserError, match="does not render conversation prefixes consistently"):
        tokenize_with_mask(tok, CONVO, "assistant", "row 1")


def test_no_template_and_none_named_says_how_to_choose(tok) -> None:
    tok.chat_template = None
    cfg = DataConfig(train=[{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}])
    with pytest.raises(UserError, match=r"data.chat_template.*chatml, llama3, mistral, gemma, qwen, alpaca.*\.jinja"):
        build_datasets(cfg, tok, seed=0)


def test_named_and_file_templates_are_applied_to_the_tokenizer(tok, tmp_path: Path) -> None:
    cfg = DataConfig(train=[{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}], chat_template="gemma")
    train, _, stats = build_datasets(cfg, tok, seed=0)
    assert tok.chat_template == load_template("gemma") and stats["chat_template"] == "gemma"
    assert "<start_of_turn>model\n" in tok.decode(train[0]["input_ids"])
    custom = tmp_path / "mine.jinja"
    custom.write_text("{% for m in messages %}{{ '<<' + m['role'] + '>>' + m['content'] + eos_token }}{% endfor %}"
                      "{% if add_generation_prompt %}{{ '<<assistant>>' }}{% endif %}")
    cfg = DataConfig(train=[{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}], chat_template=str(custom))
    train, _, _ = build_datasets(cfg, tok, seed=0)
    assert "<<user>>" in tok.decode(train[0]["input_ids"])
    tok.save_pretrained(tmp_path / "saved")  # what the pipeline does into final/
    assert (tmp_path / "saved" / "chat_template.jinja").read_text() == custom.read_text()
    with pytest.raises(UserError, match="Did you mean `llama3`"):
        build_datasets(cfg.model_copy(update={"chat_template": "llama-3"}), tok, seed=0)


def test_fast_boundary_lookup_matches_full_offsets(tok) -> None:
    """The fast path (offsets of boundary tokens only) agrees with a search over every token's offsets."""
    import json

    from tunekit.data.masking import assistant_spans, token_spans, tokenize_texts
    from tunekit.data.sources import resolve_path
    from tunekit.data.templates import renderer

    convos = [json.loads(line)["messages"] for line in resolve_path("builtin:quickstart/eval.jsonl").open()]
    convos.append([{"role": "user", "content": "Ünïcode? 你好"}, {"role": "assistant", "content": " 😀 héllo\n\n wörld 你好 "}])
    render = renderer(tok, tok.chat_template)
    for train_on in ("assistant", "last_assistant", "all"):
        rendered = [assistant_spans(render, m, train_on, "test") for m in convos]
        fast = tokenize_texts(tok, [t for t, _ in rendered], [s for _, s in rendered])
        for (text, spans), enc in zip(rendered, fast):
            full = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            assert enc["input_ids"] == full["input_ids"]
            assert enc["spans"] == token_spans(full["offset_mapping"], spans)
    assert "😀 héllo" in tok.decode(fast[-1]["input_ids"][slice(*fast[-1]["spans"][0])])
