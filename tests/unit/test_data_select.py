"""data.select: each step on constructed data where the right selection is known, and the row accounting.

The scoring tests use a hand-built "copy" model (one layer whose attention and MLP write nothing, so the logits
depend only on the current token, and whose output head predicts the current token again with p ~ 1): a token
repeating the one before it costs ~0 nats, any other ~30. Which rows have low perplexity or low IFD is then
certain, not a matter of a random model's noise.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from tunekit.data.build import build_datasets
from tunekit.data.dedup import ExactDuplicates, NearDuplicates, jaccard, normalize_text
from tunekit.data.schema import DataConfig, Keep
from tunekit.data.select import keep_by_score, keep_count
from tunekit.errors import UserError
from tunekit.model.builtin import TOKENIZER_DIR
from tunekit.model.schema import ModelConfig

TINY = ModelConfig(path="builtin:tiny-llama", dtype="float32")


@pytest.fixture()
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def copy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = torch.randn(len(tok), 64)
        emb /= emb.norm(dim=1, keepdim=True)
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.copy_(4.0 * emb)  # final RMSNorm scales a unit vector to norm 8: self-logit 32
    out = tmp_path_factory.mktemp("copy-model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pc(path: Path, completions: list[str], prompt: str = "Q") -> dict:
    return {"path": str(_write(path, [{"prompt": prompt, "completion": c} for c in completions])),
            "format": "prompt_completion"}


def _build(tok, specs: list[dict], steps: list[dict], model: ModelConfig | None = TINY, **options):
    return build_datasets(DataConfig(train=specs, select=steps, **options), tok, seed=0, model=model)


def _completions(tok, ds) -> list[str]:
    """The trained text of each row, without the end-of-turn tokens."""
    return sorted(tok.decode([t for t, lab in zip(r["input_ids"], r["labels"]) if lab != -100])
                  .removesuffix("<|im_end|>\n") for r in ds)


def _accounting_adds_up(split: dict) -> None:
    for name, d in [*split["datasets"].items(), ("total", split)]:
        assert d["rows_in"] + d["repeated"] + d["expanded"] - sum(d["dropped"].values()) == d["rows_out"], name
    steps = split["select"]
    for before, after in zip(steps, steps[1:]):
        assert after["rows_in"] == before["rows_out"]
    for r in steps:
        assert r["rows_in"] == r["rows_out"] + r["removed"]
        removed = sum(n for why, n in split["dropped"].items() if why.startswith(f"select[{r['step']}] "))
        assert removed == r["removed"]


# ------------------------------------------------------------------------------------------------ dedup


def test_exact_dedup_normalizes_case_unicode_and_whitespace(tok, tmp_path: Path) -> None:
    assert normalize_text("  Hello\t\nWORLD  ﬁne ") == "hello world fine"  # NFKC turns the ligature into "fi"
    assert normalize_text("Is it 4 ?<|im_end|>") == normalize_text("is it 4? <|im_end|>") == "is it 4 ? < | im_end | >"
    finder = ExactDuplicates()
    assert [finder.is_duplicate(i, t) for i, t in enumerate(["Hi there", "hi  THERE", "Hi there!", "hi there"])] == \
        [False, True, False, True]

    texts = ["The answer is 4.", "the answer  is 4.", "THE ANSWER IS 4.", "The answer is 5.", "The answer\nis 4."]
    spec = _pc(tmp_path / "d.jsonl", texts)
    train, _, stats = _build(tok, [spec], [{"kind": "dedup", "method": "exact"}])
    assert _completions(tok, train) == ["The answer is 4.", "The answer is 5."]  # the first of each, in file order
    assert stats["train"]["dropped"] == {"select[0] dedup exact": 3}
    _accounting_adds_up(stats["train"])
    train, _, stats = _build(tok, [spec], [{"kind": "dedup", "normalize": False}])
    assert len(train) == 5 and stats["train"]["select"][0]["removed"] == 0


def _near_pairs(seed: int) -> list[tuple[str, str, str]]:
    """(text, a near copy with Jaccard >= 0.9, a partial copy with Jaccard <= 0.6) triples of 160 random words."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnop") for _ in range(6)) for _ in range(3000)]
    out = []
    for _ in range(15):
        words = [rng.choice(vocab) for _ in range(160)]
        near = list(words)
        near[80] = "changed"  # 5 of 156 shingles differ: Jaccard 151/161
        partial = words[:80] + [rng.choice(vocab) for _ in range(80)]  # Jaccard about 76/236
        out.append((" ".join(words), " ".join(near), " ".join(partial)))
    return out


def test_minhash_finds_pairs_above_the_threshold_and_not_below() -> None:
    triples = _near_pairs(0)
    for text, near, partial in triples:
        assert jaccard(text, near) >= 0.9 and jaccard(text, partial) <= 0.6
    for seed in (0, 1, 2):
        finder = NearDuplicates(threshold=0.8, num_perm=128, ngram=5, seed=seed)
        texts = [t for triple in triples for t in triple]
        flags = [finder.is_duplicate(k, t) for k, t in enumerate(texts)]
        assert flags == [False, True, False] * len(triples), seed  # near copies removed, partial copies kept
        again = NearDuplicates(threshold=0.8, num_perm=128, ngram=5, seed=seed)
        assert [again.is_duplicate(k, t) for k, t in enumerate(texts)] == flags
    # The same identity (an upsampled copy of a kept row) is never its own duplicate.
    finder = NearDuplicates(threshold=0.8)
    assert [finder.is_duplicate(7, triples[0][0]), finder.is_duplicate(7, triples[0][0])] == [False, False]


def test_minhash_dedup_in_the_data_stage(tok, tmp_path: Path) -> None:
    triples = _near_pairs(1)[:4]
    texts = [t for triple in triples for t in triple]
    train, _, stats = _build(tok, [_pc(tmp_path / "d.jsonl", texts)],
                             [{"kind": "dedup", "method": "minhash", "threshold": 0.8, "ngram": 5, "seed": 3}],
                             max_length=2048)
    kept = _completions(tok, train)
    assert kept == sorted([t for a, _, c in triples for t in (a, c)])
    assert stats["train"]["select"][0]["removed"] == 4
    _accounting_adds_up(stats["train"])


def test_dedup_keeps_upsampled_copies_of_a_kept_row(tok, tmp_path: Path) -> None:
    spec = {**_pc(tmp_path / "d.jsonl", ["same", "other", "SAME"]), "samples": 9}  # every row 3 times
    train, _, stats = _build(tok, [spec], [{"kind": "dedup"}])
    assert _completions(tok, train) == ["other"] * 3 + ["same"] * 3  # "SAME" (and its copies) removed
    d = stats["train"]["datasets"][spec["path"]]
    assert (d["rows_in"], d["repeated"], d["rows_out"], d["dropped"]) == (3, 6, 6, {"select[0] dedup exact": 3})
    _accounting_adds_up(stats["train"])


# ------------------------------------------------------------------------------------------------ length


def test_length_rules_on_tokens_and_trained_tokens(tok, tmp_path: Path) -> None:
    spec = _pc(tmp_path / "d.jsonl", ["x" * n for n in (1, 3, 6, 10, 20)])  # "x" is one token each
    # trained tokens = the x's + <|im_end|> + "\n"; tokens = those + the prompt's rendering
    full, _, _ = _build(tok, [spec], [], model=None)
    prompt_tokens = min(len(r["input_ids"]) for r in full) - 3
    train, _, stats = _build(tok, [spec], [{"kind": "length", "min_trained_tokens": 5, "max_trained_tokens": 12}])
    assert _completions(tok, train) == ["xxx", "xxxxxx", "x" * 10]
    train, _, stats = _build(tok, [spec], [{"kind": "length", "max_tokens": prompt_tokens + 8}])
    assert _completions(tok, train) == ["x", "xxx", "xxxxxx"]
    assert stats["train"]["select"][0]["removed"] == 2
    assert stats["train"]["tokens"] == sum(len(r["input_ids"]) for r in train)  # removed rows' tokens are gone
    assert stats["train"]["trained_tokens"] == sum(sum(lab != -100 for lab in r["labels"]) for r in train)
    assert sum(b["rows"] for b in stats["train"]["length_histogram"]) == 3
    _accounting_adds_up(stats["train"])
    with pytest.raises(UserError, match=r"training set is empty after filtering.*select\[0\] length': 5.*data.select"):
        _build(tok, [spec], [{"kind": "length", "min_tokens": 500}])


# ------------------------------------------------------------------------------------------------ scores


def test_keep_by_score_top_k_fraction_threshold_and_bounds() -> None:
    s = [5.0, 1.0, 3.0, 3.0, 9.0, 2.0]
    mask, cut = keep_by_score(s, Keep(top_k=2), "high")
    assert mask.tolist() == [True, False, False, False, True, False] and cut == 5.0
    mask, cut = keep_by_score(s, Keep(top_k=3), "low")
    assert mask.tolist() == [False, True, True, False, False, True] and cut == 3.0  # a tie keeps the earlier row
    mask, cut = keep_by_score(s, Keep(fraction=0.5), "high")
    assert mask.sum() == 3 and cut == 3.0
    mask, cut = keep_by_score(s, Keep(threshold=3.0), "low")
    assert mask.tolist() == [False, True, True, True, False, True] and cut == 3.0
    mask, _ = keep_by_score(s, Keep(fraction=1.0), "high", max_score=5.0, min_score=2.0)
    assert mask.tolist() == [True, False, True, True, False, True]
    assert (keep_count(5, 0.5), keep_count(1, 0.1), keep_count(0, 0.5), keep_count(4, 0.125)) == (3, 1, 0, 1)


def test_perplexity_keeps_the_rows_the_model_predicts(tok, tmp_path: Path, copy_model: Path) -> None:
    easy = ["x" * 16, "y" * 16, "z" * 20]  # each token repeats the one before: the copy model predicts them
    hard = ["the quick brown fox", "jumps over a dog", "pack my box with jugs", "zq vk pw jr"]
    spec = _pc(tmp_path / "d.jsonl", hard[:2] + easy + hard[2:])
    step = {"kind": "score", "by": "perplexity", "model": str(copy_model), "keep": {"top_k": 3}, "order": "low"}
    train, _, stats = _build(tok, [spec], [step])
    assert _completions(tok, train) == sorted(easy)
    rec = stats["train"]["select"][0]
    assert rec["model"] == str(copy_model) and (rec["rows_in"], rec["rows_out"], rec["removed"]) == (7, 3, 4)
    s = rec["scores"]
    assert s["min"] <= s["cut"] < s["median"] <= s["max"] and s["max"] > 1000 * s["cut"]
    train, _, _ = _build(tok, [spec], [{**step, "keep": {"fraction": 0.5}, "order": "high"}])
    assert _completions(tok, train) == sorted(hard)
    _accounting_adds_up(stats["train"])


def test_ifd_is_loss_given_the_context_over_loss_alone(tok, copy_model: Path) -> None:
    import numpy as np
    from transformers import AutoModelForCausalLM

    from tunekit.data.select_score import example_scores

    model = AutoModelForCausalLM.from_pretrained(copy_model).eval()
    c, a, b, start = (tok.convert_tokens_to_ids(t) for t in ("c", "a", "b", "<|im_end|>"))
    answer = [a] * 5

    def ex(context: list[int]) -> tuple:
        ids = np.asarray(context + answer, dtype=np.int32)
        return ids, np.asarray([-100] * len(context) + answer, dtype=np.int32)

    helped, unhelped = ex([c, c, a]), ex([c, c, b])  # the context's last token predicts the answer, or not
    ifd = example_scores(model, [helped, unhelped], "ifd", start, tok.pad_token_id)
    assert ifd[0] < 0.01 and 0.8 < ifd[1] < 1.2  # ~0 given the context; ~1 (a miss costs about the same) without
    # The same numbers as the definition, computed with transformers' own loss.
    import torch

    def loss(ids: list[int], labels: list[int]) -> float:
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss)

    cond = loss([c, c, b, *answer], [-100, -100, -100, *answer])
    alone = loss([start, *answer], [-100, *answer])
    assert ifd[1] == pytest.approx(cond / alone, rel=1e-4)
    ppl = example_scores(model, [unhelped], "perplexity", start, tok.pad_token_id)
    assert ppl[0] == pytest.approx(math.exp(cond), rel=1e-4)


def test_ifd_in_the_data_stage_prefers_answers_the_instruction_helps(tok, tmp_path: Path, copy_model: Path) -> None:
    # The answer follows the template's "assistant\n": an answer of newlines (and a full stop: a whitespace-only
    # answer is refused as empty) is predicted from that context, and not from the start token alone (IFD < 1); an
    # answer of x's is predicted equally badly from both (IFD 1).
    spec = _pc(tmp_path / "d.jsonl", ["\n" * 6 + ".", "xxxxxx", "\n" * 8 + ".", "yyyyyyyy"])
    step = {"kind": "score", "by": "ifd", "model": str(copy_model), "keep": {"threshold": 0.8}, "order": "low"}
    train, _, stats = _build(tok, [spec], [step])
    assert sorted(_completions(tok, train)) == sorted(["\n" * 6 + ".", "\n" * 8 + "."])
    s = stats["train"]["select"][0]["scores"]
    assert s["min"] < 0.75 and 0.9 < s["max"] < 1.1 and s["cut"] == 0.8


def test_a_scoring_model_with_another_vocabulary_is_refused(tok, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    small = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    small.add_tokens(["<extra>"])
    small.save_pretrained(other)
    step = {"kind": "score", "by": "perplexity", "model": str(other), "keep": {"top_k": 1}, "order": "low"}
    with pytest.raises(UserError, match=r"data.select.model: .*another tokenizer than the recipe's"):
        _build(tok, [_pc(tmp_path / "d.jsonl", ["a", "b"])], [step])


# ------------------------------------------------------------------------------------------------ random, order


def test_random_baseline_is_seeded_and_reproducible(tok, tmp_path: Path) -> None:
    spec = _pc(tmp_path / "d.jsonl", [f"answer {i}" for i in range(40)])
    half = [{"kind": "random", "fraction": 0.5}]
    a, _, stats = _build(tok, [spec], half, cache_dir=str(tmp_path / "c1"))
    b, _, _ = _build(tok, [spec], half, cache_dir=str(tmp_path / "c2"))  # rebuilt, not read from a cache
    assert a["input_ids"] == b["input_ids"] and len(a) == 20
    assert stats["train"]["select"][0]["seed"] == 0
    other, _, _ = _build(tok, [spec], half, shuffle_seed=5)
    assert _completions(tok, other) != _completions(tok, a)
    reseeded, _, _ = _build(tok, [spec], [{"kind": "random", "fraction": 0.5, "seed": 5}])
    assert _completions(tok, reseeded) != _completions(tok, a)
    counted, _, stats = _build(tok, [spec], [{"kind": "random", "count": 7}])
    assert len(counted) == 7 and stats["train"]["dropped"] == {"select[0] random": 33}
    _accounting_adds_up(stats["train"])
    packed, _, stats = _build(tok, [spec], half, packing=True)  # packing takes the selected rows
    assert stats["train"]["packing"]["examples"] == 20 and sum(len(r["seq_lengths"]) for r in packed) == 20


def test_selection_is_the_same_for_any_num_proc(tok, tmp_path: Path) -> None:
    spec = {"path": "builtin:quickstart/train.jsonl", "format": "messages", "samples": 900}
    steps = [{"kind": "dedup"}, {"kind": "dedup", "method": "minhash", "ngram": 3}, {"kind": "random", "count": 500}]
    builds = [_build(tok, [spec], steps, num_proc=n, max_length=64, cache_dir=str(tmp_path / str(n))) for n in (1, 3)]
    (one, _, s1), (three, _, s3) = builds
    assert one["input_ids"] == three["input_ids"] and len(one) == 500
    assert s1["train"]["select"] == s3["train"]["select"] and s1["train"]["select"][0]["removed"] > 0


def test_steps_chain_in_order_and_the_eval_hold_out_is_unchanged(tok, tmp_path: Path) -> None:
    rows = [f"answer number {i}" for i in range(30)] + ["ANSWER number 3", "answer number  4"] + ["x" * 60]
    spec = _pc(tmp_path / "d.jsonl", rows)
    steps = [{"kind": "length", "max_trained_tokens": 40}, {"kind": "dedup"}, {"kind": "random", "count": 10}]
    train, evals, stats = _build(tok, [spec], steps, eval_fraction=0.2, max_length=128)
    _, plain_evals, _ = _build(tok, [spec], [], eval_fraction=0.2, max_length=128)
    assert evals["input_ids"] == plain_evals["input_ids"]  # selection runs on the rows left for training
    held = stats["held_out_for_eval"]
    recs = stats["train"]["select"]
    assert recs[0]["rows_in"] == len(rows) - held and recs[-1]["rows_out"] == len(train) == 10
    assert [r["kind"] for r in recs] == ["length", "dedup", "random"]
    _accounting_adds_up(stats["train"])


def test_no_select_leaves_the_statistics_and_cache_key_as_they_were(tok, tmp_path: Path) -> None:
    from tunekit.data import cache

    spec = _pc(tmp_path / "d.jsonl", ["a", "b"])
    _, _, stats = _build(tok, [spec], [], model=None)
    assert "select" not in stats["train"]
    cfg = DataConfig(train=[spec])
    fp = cache.fingerprint(cfg, tok, None, 0)
    with_step = cfg.model_copy(update={"select": DataConfig(train=[spec], select=[{"kind": "dedup"}]).select})
    assert cache.fingerprint(with_step, tok, None, 0) != fp


def test_the_scoring_model_is_part_of_the_cache_key(tok, tmp_path: Path, copy_model: Path) -> None:
    spec = _pc(tmp_path / "d.jsonl", ["aaaa", "the fox", "bbbb"])
    step = {"kind": "score", "by": "perplexity", "keep": {"top_k": 2}, "order": "low"}
    opts = {"cache_dir": str(tmp_path / "cache")}
    _, _, own = _build(tok, [spec], [step], **opts)
    assert own["cache"] == "built" and own["train"]["select"][0]["model"] == "builtin:tiny-llama"
    assert _build(tok, [spec], [step], **opts)[2]["cache"] == "reused"
    _, _, seeded = _build(tok, [spec], [step], model=TINY.model_copy(update={"init_seed": 1}), **opts)
    assert seeded["cache"] == "built" and seeded["fingerprint"] != own["fingerprint"]  # other weights, same path
    _, _, copy = _build(tok, [spec], [{**step, "model": str(copy_model)}], **opts)
    assert copy["cache"] == "built" and copy["fingerprint"] not in (own["fingerprint"], seeded["fingerprint"])


# ------------------------------------------------------------------------------------------------ other formats


def test_preference_rows_dedup_on_the_whole_pair_and_length_on_the_longest(tok, tmp_path: Path) -> None:
    rows = [{"prompt": "What is 1+1?", "chosen": "2", "rejected": "3"},
            {"prompt": "what is 1+1?", "chosen": "2", "rejected": "3 "},  # a case/space variant: a duplicate
            {"prompt": "What is 1+1?", "chosen": "2", "rejected": "4"},  # another rejected: kept
            {"prompt": "What is 2+2?", "chosen": "4", "rejected": "4 " + "and more " * 30}]
    spec = {"path": str(_write(tmp_path / "p.jsonl", rows)), "format": "preference"}
    steps = [{"kind": "dedup"}, {"kind": "length", "max_tokens": 60}]
    train, _, stats = _build(tok, [spec], steps, chat_template="chatml")
    assert sorted(r["rejected"][0]["content"] for r in train) == ["3", "4"]
    d = stats["train"]["datasets"][spec["path"]]
    assert d["dropped"] == {"select[0] dedup exact": 1, "select[1] length": 1} and d["rows_out"] == 2
    assert stats["train"]["rows_out"] == len(train) == 2 and stats["train"]["select"][1]["removed"] == 1


def test_reft_rows_take_dedup_and_random(tok, tmp_path: Path) -> None:
    rows = [{"question": f"What is {i} plus 1?", "answer": str(i + 1), "solution": f"{i}+1={i + 1}\n#### {i + 1}"}
            for i in range(10)]
    spec = {"path": str(_write(tmp_path / "r.jsonl", rows + rows[:3])), "format": "prompt_answer"}
    train, _, stats = _build(tok, [spec], [{"kind": "dedup"}, {"kind": "random", "count": 4}], chat_template="chatml")
    assert [r["removed"] for r in stats["train"]["select"]] == [3, 6] and len(train) == 4


def _scored_rows(kind: str, easy: list[str], hard: list[str]) -> list[dict]:
    """Rows of format `kind` whose scored answer is each text in turn; the other answer (rejected, the ReFT `answer`)
    is the opposite kind of text, so scoring the wrong field would reverse the selection."""
    rows = []
    for text in [*hard[:2], *easy, *hard[2:]]:
        other = hard[0] if text in easy else easy[0]
        rows.append({"preference": {"prompt": "Q", "chosen": text, "rejected": other},
                     "unpaired_preference": {"prompt": "Q", "completion": text, "label": text in hard},
                     "prompt_answer": {"question": "Q", "answer": other, "solution": text}}[kind])
    return rows


@pytest.mark.parametrize("kind", ["preference", "unpaired_preference", "prompt_answer"])
def test_perplexity_scores_the_chosen_answer_of_preference_kto_and_reft_rows(tok, tmp_path: Path, copy_model: Path,
                                                                             kind: str) -> None:
    easy = ["x" * 16, "y" * 16, "z" * 20]  # predicted by the copy model (see the module doc)
    hard = ["the quick brown fox", "jumps over a dog", "pack my box with jugs", "zq vk pw jr"]
    spec = {"path": str(_write(tmp_path / "d.jsonl", _scored_rows(kind, easy, hard))), "format": kind}
    step = {"kind": "score", "by": "perplexity", "model": str(copy_model), "keep": {"top_k": 3}, "order": "low"}
    train, _, stats = _build(tok, [spec], [{"kind": "dedup"}, step], chat_template="chatml")
    field = {"preference": "chosen", "unpaired_preference": "completion", "prompt_answer": "solution"}[kind]
    kept = [r[field] if kind == "prompt_answer" else r[field][0]["content"] for r in train]
    assert sorted(kept) == sorted(easy)
    rec = stats["train"]["select"][1]
    assert rec["model"] == str(copy_model) and (rec["rows_in"], rec["rows_out"], rec["removed"]) == (7, 3, 4)
    assert rec["scores"]["max"] > 1000 * rec["scores"]["cut"]
    d = stats["train"]["datasets"][spec["path"]]
    assert d["dropped"] == {"select[1] score perplexity": 4} and d["rows_out"] == stats["train"]["rows_out"] == 3


def test_ifd_scores_preference_rows_by_the_chosen_answer_given_the_prompt(tok, tmp_path: Path,
                                                                         copy_model: Path) -> None:
    # The prompt ends with the template's "assistant\n". Chosen "\n" * 6 + "a": given the prompt the newlines cost ~0
    # and "a", <|im_end|>, "\n" ~30 each (3 misses in 9 tokens); alone (after the start token) the first newline is a
    # miss too: IFD ~ 3/4. Chosen "xxxxxx": a miss at the first x in both: IFD ~ 1. Rejected is the other kind.
    rows = [{"prompt": "Q", "chosen": c, "rejected": r} for c, r in (
        ("\n" * 6 + "a", "xxxxxx"), ("xxxxxx", "\n" * 6 + "a"), ("\n" * 8 + "b", "yy"), ("yyyyyyyy", "\n" * 8 + "b"))]
    spec = {"path": str(_write(tmp_path / "p.jsonl", rows)), "format": "preference"}
    step = {"kind": "score", "by": "ifd", "model": str(copy_model), "keep": {"threshold": 0.85}, "order": "low"}
    train, _, stats = _build(tok, [spec], [step], chat_template="chatml")
    assert sorted(r["chosen"][0]["content"] for r in train) == sorted(["\n" * 6 + "a", "\n" * 8 + "b"])
    s = stats["train"]["select"][0]["scores"]
    assert 0.7 < s["min"] < 0.8 and 0.9 < s["max"] < 1.1


def test_answer_example_masks_the_prompt_and_keeps_an_answer_token_when_truncated(tok) -> None:
    from tunekit.data.select_rows import answer_example
    from tunekit.data.templates import apply_chat_template_choice, renderer

    template = apply_chat_template_choice(tok, "chatml")
    render = renderer(tok, template, "chatml")
    row = {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "yes"}],
           "rejected": [{"role": "assistant", "content": "no"}]}
    ids, labels = answer_example(row, render, tok, 512)
    head = tok(render(row["prompt"], add_generation_prompt=True), add_special_tokens=False).input_ids
    assert ids[: len(head)].tolist() == head and (labels[: len(head)] == -100).all()
    assert tok.decode(ids[labels != -100]).startswith("yes")
    ids, labels = answer_example(row, render, tok, 8)  # 8 < the prompt's tokens: the first answer token stays
    assert len(ids) == len(head) + 1 and (labels != -100).sum() == 1


def _recipe_error(tmp_path: Path, data: dict, kind: str = "sft") -> str:
    from tunekit.recipe.load import load_recipe

    recipe = {"model": {"path": "builtin:tiny-llama"}, "data": data, "trainer": {"kind": kind},
              "method": {"name": "lora"}, "output": {"dir": str(tmp_path / "run")}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(UserError) as info:
        load_recipe(path, [])
    return str(info.value)


def test_steps_that_cannot_apply_are_recipe_errors_naming_the_field(tmp_path: Path) -> None:
    score = {"kind": "score", "by": "perplexity", "keep": {"top_k": 5}, "order": "low"}
    text = {"train": [{"path": "x.jsonl", "format": "text"}], "select": [{**score, "by": "ifd"}]}
    msg = _recipe_error(tmp_path, text)
    line = next(i for i, t in enumerate((tmp_path / "r.yaml").read_text().splitlines(), 1) if t.startswith("  select:"))
    assert f"r.yaml:{line + 1}:" in msg  # the position of the select list
    assert "data.select: select[0].by: ifd" in msg and "`text` rows have no instruction" in msg
    qs = {"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages"}]}
    assert "train_on: all" in _recipe_error(tmp_path, {**qs, "train_on": "all", "select": [{**score, "by": "ifd"}]})
    msg = _recipe_error(tmp_path, {**qs, "select": [{"kind": "dedup", "threshold": 0.5}]})
    assert "data.select.0.threshold" not in msg and "threshold applies to `method: minhash` only" in msg
    msg = _recipe_error(tmp_path, {**qs, "select": [{**score, "keep": {"top_k": 3, "fraction": 0.5}}]})
    assert "data.select.0.keep" in msg and "exactly one of top_k, fraction, threshold" in msg
    msg = _recipe_error(tmp_path, {**qs, "select": [{"kind": "random"}]})
    assert "exactly one of fraction, count" in msg
    msg = _recipe_error(tmp_path, {**qs, "select": [{"kind": "lenght", "max_tokens": 3}]})
    assert "data.select.0.kind" in msg and "Did you mean `length`?" in msg
    msg = _recipe_error(tmp_path, {**qs, "select": [{"kind": "length"}]})
    assert "at least one of min_tokens" in msg
