"""Token-budget batches (data/token_batches.py) and the fast-path keys' rules: pure Python, no training."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from tunekit.data.token_batches import TokenBudgetSampler, batch_cost, token_budget_batches
from tunekit.errors import UserError
from tunekit.recipe.schema import Recipe
from tunekit.trainers import training_args

LENGTHS = [random.Random(7).randint(3, 64) for _ in range(203)]


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("budget", [64, 200, 1000])
def test_every_row_once_per_epoch_and_no_batch_over_the_budget(padded: bool, budget: int) -> None:
    sampler = TokenBudgetSampler(LENGTHS, budget, padded, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        assert max(batch_cost([LENGTHS[i] for i in b], padded) for b in batches) <= budget
    # the budget is used: batches hold several rows on average when rows are much shorter than it
    if budget == 1000:
        assert len(sampler) < len(LENGTHS) / 5


def test_padded_batches_group_rows_of_similar_length() -> None:
    """With padding counted, rows sorted by length fill the batches: the padding is a small share of the cost."""
    batches = token_budget_batches(LENGTHS, 512, padded=True, seed=0)
    cost = sum(batch_cost([LENGTHS[i] for i in b], True) for b in batches)
    assert sum(LENGTHS) / cost > 0.85


def test_same_seed_same_batches_other_seed_or_epoch_other_order() -> None:
    a, b = TokenBudgetSampler(LENGTHS, 300, False, seed=1), TokenBudgetSampler(LENGTHS, 300, False, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(map(sorted, a)) == sorted(map(sorted, first))  # same batches, new order
    assert list(TokenBudgetSampler(LENGTHS, 300, False, seed=2)) != first


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_get_disjoint_rows_and_the_same_number_of_batches(world: int) -> None:
    """Through accelerate's own BatchSamplerShard, as `accelerator.prepare` wraps the sampler in a DDP run."""
    sampler = TokenBudgetSampler(LENGTHS, 256, True, seed=0, world_size=world)
    sampler.set_epoch(1)
    shards = [list(BatchSamplerShard(sampler, num_processes=world, process_index=r)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(sampler) // world
    rows = [i for s in shards for b in s for i in b]
    assert sorted(rows) == list(range(len(LENGTHS)))  # disjoint, and together every row once


def test_too_few_rows_for_the_processes_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot make a multiple of 4 batches"):
        token_budget_batches([60, 60, 60], 64, True, seed=0, world_size=4)


def recipe(data: dict | None = None, trainer: dict | None = None, model: dict | None = None) -> Recipe:
    return Recipe.model_validate({
        "model": model or {"path": "builtin:tiny-llama"},
        "data": {"train": [{"path": "x.jsonl", "format": "messages"}], "max_length": 64, **(data or {})},
        "method": {"name": "lora"}, "trainer": {"kind": "sft", **(trainer or {})}, "output": {"dir": "/tmp/x"}})


def test_token_budget_sets_the_rows_per_batch() -> None:
    r = recipe({"tokens_per_batch": 200, "packing": True})
    assert r.trainer.per_device_batch_size == 3  # 200 // 64 packed rows
    assert Recipe.model_validate(r.model_dump(mode="json")).trainer.per_device_batch_size == 3  # resolved reloads
    with pytest.raises(ValueError, match="both size the batch"):
        recipe({"tokens_per_batch": 200}, {"per_device_batch_size": 4})
    with pytest.raises(ValueError, match="at least 64"):
        recipe({"tokens_per_batch": 32})


def test_token_budget_is_refused_for_pair_trainers() -> None:
    with pytest.raises(ValueError, match="trainer.kind sft"):
        Recipe.model_validate({
            "model": {"path": "builtin:tiny-llama"}, "method": {"name": "lora"}, "output": {"dir": "/tmp/x"},
            "data": {"train": [{"path": "x.jsonl", "format": "preference"}], "tokens_per_batch": 2048},
            "trainer": {"kind": "dpo"}})


def test_activation_offload_needs_checkpointing() -> None:
    with pytest.raises(ValueError, match="gradient_checkpointing: true"):
        recipe(trainer={"activation_offload": True})


def test_checkpointing_is_non_reentrant() -> None:
    t = recipe(trainer={"gradient_checkpointing": True, "activation_offload": True}).trainer
    assert training_args.checkpointing_kwargs(t) == {"use_reentrant": False, "offload": True}
    assert training_args.checkpointing_kwargs(recipe().trainer) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults and refusals")
def test_cpu_defaults_and_refusals() -> None:
    r = recipe()
    assert training_args.fast_paths(r, "llama") | {"optim": "adamw_torch", "kernels": "none", "compile": False,
                                                   "attn_implementation": "sdpa"} == training_args.fast_paths(r, "llama")
    assert r.model.attn_implementation == "auto"  # the default, resolved to sdpa here (no CUDA, no flash-attn)
    explicit = recipe(model={"path": "builtin:tiny-llama", "attn_implementation": "eager"})
    assert training_args.fast_paths(explicit)["attn_implementation"] == "eager"
    training_args.check_fast_paths(r.trainer)  # auto everywhere: nothing to refuse
    for key, value, says in (("kernels", "liger", "needs a CUDA GPU"), ("activation_offload", True, "needs a GPU")):
        extra = {"gradient_checkpointing": True} if key == "activation_offload" else {}
        with pytest.raises(UserError, match=says) as e:
            training_args.check_fast_paths(recipe(trainer={key: value, **extra}).trainer)
        assert "Instead: set trainer." in str(e.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults() -> None:
    assert training_args.resolved_optim("auto") == "adamw_torch_fused"
    assert training_args.resolved_optim("adamw_8bit") == "adamw_8bit"
    expected = "liger" if training_args.liger_supports("llama") else "none"
    assert training_args.resolved_kernels("auto", "llama") == expected
    flash = importlib.util.find_spec("flash_attn") is not None and torch.cuda.get_device_capability()[0] >= 8
    bf16 = recipe(model={"path": "builtin:tiny-llama", "dtype": "bfloat16"})
    assert training_args.fast_paths(bf16)["attn_implementation"] == ("flash_attention_2" if flash else "sdpa")
    fp32 = recipe(model={"path": "builtin:tiny-llama", "dtype": "float32"})
    assert training_args.fast_paths(fp32)["attn_implementation"] == "sdpa"  # flash-attention needs 16-bit weights
