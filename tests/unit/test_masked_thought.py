"""Masked Thought's transform on constructed rows: only trained tokens are masked in the input, labels never
change, the masked fraction is the configured one, masks are fresh on every read and follow torch's seed."""

from __future__ import annotations

import datasets
import pytest
import torch

from tunekit.recipe.schema import Recipe
from tunekit.trainers.sft import masked_thought

MASK = 0


def rows(n: int = 200, length: int = 40, prompt: int = 10) -> datasets.Dataset:
    ids = [[100 + (i * 7 + j) % 50 for j in range(length)] for i in range(n)]
    labels = [[-100] * prompt + r[prompt:] for r in ids]  # the first `prompt` tokens carry no loss
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})


def test_only_trained_input_tokens_are_masked_at_the_configured_rate() -> None:
    ds = rows()
    torch.manual_seed(0)
    masked = masked_thought(ds, 0.2, MASK)
    hits = trained = 0
    for i in range(len(ds)):
        orig, got = ds[i], masked[i]
        assert got["labels"] == orig["labels"]  # labels untouched
        for x, y, lab in zip(orig["input_ids"], got["input_ids"], orig["labels"], strict=True):
            if lab == -100:
                assert y == x  # prompt (untrained) tokens are never masked
            else:
                trained += 1
                hits += y == MASK
                assert y in (x, MASK)
    # 200 rows x 30 trained tokens = 6000 Bernoulli(0.2) draws: sd = sqrt(0.16 / 6000) = 0.0052; 0.02 is ~4 sd
    assert trained == 6000 and hits / trained == pytest.approx(0.2, abs=0.02)


def test_masks_are_fresh_on_every_read_and_seeded() -> None:
    masked = masked_thought(rows(n=4), 0.3, MASK)
    torch.manual_seed(1)
    first, second = masked[0]["input_ids"], masked[0]["input_ids"]
    assert first != second  # a new draw each time the row is read (each epoch / step)
    torch.manual_seed(1)
    assert masked[0]["input_ids"] == first  # same seed, same masks


def test_masked_thought_is_refused_for_trainers_without_sft() -> None:
    base = {"model": {"path": "builtin:tiny-llama"}, "method": {"name": "lora"}, "output": {"dir": "x"},
            "data": {"train": [{"path": "p.jsonl", "format": "preference"}], "masked_thought": 0.2},
            "trainer": {"kind": "dpo"}}
    with pytest.raises(ValueError, match="data.masked_thought masks SFT inputs"):
        Recipe.model_validate(base)
    with pytest.raises(ValueError, match="less than 1"):
        Recipe.model_validate({**base, "data": {**base["data"], "masked_thought": 1.0}, "trainer": {"kind": "sft"}})
