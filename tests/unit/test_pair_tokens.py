"""Preference pairs as the model reads and writes them (`tunekit.data.pair_tokens`).

- Where a template renders a conversation's prefixes consistently, the token ids tunekit hands DPO and KTO are
  exactly TRL's own (`DPOTrainer._prepare_dataset` / `KTOTrainer._prepare_dataset` run on the same rows): no
  change for the common families.
- Everywhere, a pair is SFT's example of the same conversation: the prompt's ids are the context SFT leaves
  untrained (the template's whole generation prompt) and the answer's ids are the text SFT trains. For the
  templates whose generation prompt differs from how they render an answered turn (DeepSeek-R1's `<think>\\n`,
  Gemma 4's empty thought channel, Kimi-K2-Thinking's empty think block, GLM's header-delimited turns, Mistral
  v0.3's system text moved into the last user turn) TRL's pairs are scored after a shorter context, without a
  stop, or with the user's question as part of the answer; the test shows each difference too.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.unit.test_data_families import _tokenizer
from tests.unit.test_template_fields import (
    GEMMA4_LIKE,
    GLM_LIKE,
    INDENTED,
    KIMI_LIKE,
    NEMOTRON_LIKE,
    NOTHINK_LIKE,
    _agentic_trace,
    _tok,
)
from tunekit.data.masking import conversation_examples, tokenize_texts
from tunekit.data.messages import Conversation
from tunekit.data.pair_tokens import exact_pairs
from tunekit.data.preference import preference_row
from tunekit.data.schema import DatasetSpec

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
RAW = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "3+3?"}],
     "chosen": "6", "rejected": "It is 7, I think."},
    {"prompt": [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "content": "18 C", "name": "get_weather"}],
     "chosen": "It is 18 C.", "rejected": "No idea."},
]
MULTI = {"prompt": "Weather in Paris?",  # an answer of several messages: a call, its result, the answer
         "chosen": [{"role": "assistant", "content": None, "tool_calls": [CALL]},
                    {"role": "tool", "content": "18 C", "name": "get_weather"},
                    {"role": "assistant", "content": "It is 18 C."}],
         "rejected": "It is sunny."}
REASONING = {"prompt": "5+5?", "chosen": [{"role": "assistant", "reasoning_content": "Add five and five.",
                                            "content": "10"}],
             "rejected": [{"role": "assistant", "reasoning_content": "Guess.", "content": "11"}]}

AGENTIC = {"prompt": _agentic_trace()[:5],  # tool-call turns with their reasoning, then the final answer's pair
           "chosen": [{"role": "assistant", "reasoning_content": "Both known.", "content": "18 and 21."}],
           "rejected": [{"role": "assistant", "reasoning_content": "Guess.", "content": "Cold."}]}


def _rows(raw: list[dict]):
    from datasets import Dataset

    spec = DatasetSpec(path="x.jsonl", format="preference")
    return Dataset.from_list([preference_row(r, spec, f"x.jsonl:{i + 1}") for i, r in enumerate(raw)])


def _trl(kind: str, ds, tok, tmp_path):  # noqa: ANN001, ANN202
    """TRL's own tokenization of the conversational rows (its `_prepare_dataset`, unbound: it reads no trainer
    state for conversational rows but the KL flag)."""
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    if kind == "dpo":
        return DPOTrainer._prepare_dataset(SimpleNamespace(), ds, tok, DPOConfig(str(tmp_path), use_cpu=True, bf16=False), "train")
    me = SimpleNamespace(calculate_KL=False, desirable_weight=1.0, undesirable_weight=1.0)
    return KTOTrainer._prepare_dataset(me, ds, tok, KTOConfig(str(tmp_path), use_cpu=True, bf16=False), "train")


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3", "llama3.1", "gemma3", "phi4", "chatml"])
def test_consistent_templates_give_trls_own_token_ids(name: str, tmp_path) -> None:  # noqa: ANN001
    from tunekit.data.templates import load_template

    tok = _tokenizer(name) if name != "chatml" else _tok()
    tok.chat_template = load_template(name)
    tools = {"qwen3": [RAW[2], MULTI, REASONING], "qwen2.5": [RAW[2], MULTI]}.get(name, [])  # templates with tools
    raw = [*RAW[:2], *tools]
    ds = _rows(raw)
    ours = exact_pairs(ds, tok, "dpo")
    theirs = _trl("dpo", ds, tok, tmp_path)
    cols = ["prompt_ids", "chosen_ids", "rejected_ids"]
    assert ours.column_names == cols
    assert ours.to_list() == theirs.select_columns(cols).to_list()
    from trl.data_utils import unpair_preference_dataset

    unpaired = unpair_preference_dataset(ds)
    cols = ["prompt_ids", "completion_ids", "label"]
    assert exact_pairs(unpaired, tok, "kto").to_list() == _trl("kto", unpaired, tok, tmp_path).select_columns(
        cols).to_list()


def _sft(render, conv: list[dict], tok) -> tuple[list[int], list[int]]:  # noqa: ANN001
    """SFT's example of the conversation's last turn: (the untrained context's ids, the trained ids)."""
    examples = conversation_examples(render, Conversation.of(conv), "last_assistant", "per_turn", "test")
    (text, [(a, b)]), = examples
    assert b == len(text)
    enc = tokenize_texts(tok, [text], [[(a, b)]])[0]
    (start, end), = enc["spans"]
    return enc["input_ids"][:start], enc["input_ids"][start:end]


SHAPES = {  # template, tokenizer, what TRL's prompt lacks at its end (None: TRL's pair is SFT's too)
    "deepseek-r1-distill": (None, "deepseek-r1-distill", "<think>\n"),
    "gemma4-like": (GEMMA4_LIKE, None, "<|channel>thought\n<channel|>"),
    "nemotron-like": (NEMOTRON_LIKE, None, "<think>\n"),
    "glm-like": (GLM_LIKE, None, None),
    "kimi-like": (KIMI_LIKE, None, None),
    "mistral-v0.3": (None, "mistral-v0.3", None),
    "qwen3": (None, "qwen3", None),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_pair_is_the_sft_example_of_its_conversation(shape: str, tmp_path) -> None:  # noqa: ANN001
    from tunekit.data.templates import renderer

    template, family, lacks = SHAPES[shape]
    tok = _tokenizer(family) if family else _tok()
    if template:
        tok.chat_template = template
    render = renderer(tok, tok.chat_template)
    raw = [*RAW[:2], *([REASONING] if shape in ("deepseek-r1-distill", "kimi-like", "qwen3", "nemotron-like")
                       else []), *([AGENTIC] if shape in ("kimi-like", "qwen3") else [])]
    ds = _rows(raw)
    ours = exact_pairs(ds, tok, "dpo").to_list()
    for row, pair in zip(ds.to_list(), ours):
        for answer in ("chosen", "rejected"):
            context, trained = _sft(render, [*row["prompt"], *row[answer]], tok)
            assert pair["prompt_ids"] == context
            assert pair[f"{answer}_ids"] == trained
    texts = exact_pairs(ds, tok, "orpo").to_list()  # ORPO and CPO get the texts
    assert [tok(t["prompt"], add_special_tokens=False).input_ids for t in texts] == [p["prompt_ids"] for p in ours]
    theirs = _trl("dpo", ds, tok, tmp_path).to_list()
    if shape == "glm-like":  # TRL's answer ends with nothing: the model never learns to stop
        assert all(tok.decode(p["chosen_ids"]).endswith("<|user|>") for p in ours)
        assert not any(tok.decode(t["chosen_ids"]).endswith("<|user|>") for t in theirs)
    elif shape == "mistral-v0.3":  # the system text moves into the last user turn only in the prompt rendered alone:
        # TRL's prompt ends before that turn, so its completion scores the user's question, without the system text
        assert "3+3?" in tok.decode(theirs[1]["chosen_ids"]) and "Be brief." not in tok.decode(theirs[1]["chosen_ids"])
        assert tok.decode(ours[1]["prompt_ids"]).endswith("[INST] Be brief.\n\n3+3?[/INST]")
        assert tok.decode(ours[1]["chosen_ids"]) == " 6</s>"
    elif shape == "kimi-like":  # TRL's completion keeps an empty think block; the reasoning row is refused there
        assert tok.decode(ours[2]["chosen_ids"]).startswith("<think>Add five and five.</think>")
        # the agentic row: its answer is written after the calls' reasoning, which the prompt keeps
        assert "<think>Now Rome.</think>" in tok.decode(ours[3]["prompt_ids"])
        assert tok.decode(ours[3]["chosen_ids"]) == "<think>Both known.</think>18 and 21.<|im_end|>"
    elif lacks:  # the rows without reasoning (Nemotron's template renders a last turn's reasoning as written)
        for p, t in zip(ours[:2], theirs[:2]):
            assert tok.decode(p["prompt_ids"]).endswith(lacks)
            assert p["prompt_ids"][: len(t["prompt_ids"])] == t["prompt_ids"] and len(t["prompt_ids"]) < len(
                p["prompt_ids"])
    else:
        assert ours == [{k: t[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for t in theirs]


def test_an_answer_whose_later_turns_lose_their_reasoning_is_refused() -> None:
    """DeepSeek-R1's template strips reasoning from rendered turns: the first turn of an answer is written as the
    model writes it (with its reasoning), a later one is rendered without it, so such a row is an error naming the
    field, not a pair that silently lost the reasoning."""
    from tunekit.data.preference import check_renders
    from tunekit.data.templates import renderer
    from tunekit.errors import UserError

    tok = _tokenizer("deepseek-r1-distill")
    render = renderer(tok, tok.chat_template, "deepseek-r1-distill")
    row = _rows([{"prompt": "Hi", "chosen": [
        {"role": "assistant", "reasoning_content": "Greet.", "content": "Hello! Anything else?"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "reasoning_content": "Add.", "content": "4"}],
        "rejected": "Bye."}]).to_list()[0]
    with pytest.raises(UserError, match="x.jsonl:1: .* drops the reasoning of `chosen`"):
        check_renders(render, row, "x.jsonl:1")


def test_templates_without_a_known_answer_text_are_refused_with_the_sft_reasons() -> None:
    """Where SFT cannot say what the model writes after the prompt, neither can a pair: a template laid out for
    reading (whitespace between its tags) gets SFT's whitespace message; reasoning under a generation prompt that
    closes an empty think block (thinking off) names the switch. TRL's rule would have scored these pairs after a
    context the model never sees."""
    from tunekit.data.pair_tokens import pair_texts
    from tunekit.data.templates import renderer
    from tunekit.errors import UserError

    tok = _tok()
    row = _rows([RAW[0], REASONING]).to_list()
    with pytest.raises(UserError, match="x:1: the chat template renders a conversation differently from its own "
                                        "generation prompt only in whitespace"):
        pair_texts(renderer(tok, INDENTED), row[0]["prompt"], row[0]["chosen"], "x:1")
    nothink = renderer(tok, NOTHINK_LIKE)
    assert pair_texts(nothink, row[0]["prompt"], row[0]["chosen"], "x:1")[1] == "4<|im_end|>\n"  # after the block
    with pytest.raises(UserError, match="x:2: .*does not follow its own generation prompt.*enable_thinking"):
        pair_texts(nothink, row[1]["prompt"], row[1]["chosen"], "x:2")
