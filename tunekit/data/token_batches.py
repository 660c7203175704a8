"""Token-budget batches for unpacked rows (`data.tokens_per_batch`): a batch sampler whose batches hold as many rows
as fit in a budget of tokens, instead of a fixed number of rows.

The cost of a batch is what the model processes: with padding, rows x the longest row (the collator pads to it);
padding-free (`data.padding_free`), the sum of the rows' lengths. Every batch costs at most the budget
(`data.tokens_per_batch` >= `data.max_length`, so every row fits alone).

The batches are formed once per run from the data seed: rows in a seeded random order, then sorted by length,
longest first (the seeded order breaks ties), and filled greedily (with padding: consecutive rows of similar
length, so little padding; padding-free: best-fit decreasing bins, data/packing.py). Each epoch visits every batch
once, in an order drawn from (seed, epoch): every row is seen exactly once per epoch, the number of batches is the
same in every epoch (the trainer's step count and resume arithmetic rely on it), and a resumed run sees the same
batches in the same order. With several processes the count is made a multiple of the world size by splitting the
largest batches in two (a split never exceeds the budget), so that accelerate's batch sharding deals batch i to
rank i % world: the ranks see disjoint rows and the same number of batches.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tunekit.data.packing import bfd_bins


def batch_cost(lengths: list[int], padded: bool) -> int:
    """Tokens the model processes for rows of these lengths: rows x longest with padding, else their sum."""
    return len(lengths) * max(lengths) if padded else sum(lengths)


def padded_batches(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive rows of `order` (longest first) while rows x the first (longest) row's length fits the budget."""
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def split_to_multiple(batches: list[list[int]], world_size: int) -> list[list[int]]:
    """Split the batches with the most rows in two until their number is a multiple of `world_size`."""
    batches = [list(b) for b in batches]
    while len(batches) % world_size:
        k = max(range(len(batches)), key=lambda j: len(batches[j]))
        if len(batches[k]) < 2:
            raise ValueError(f"{sum(map(len, batches))} rows cannot make a multiple of {world_size} batches (one per "
                             "process and step): use fewer processes or more data")
        half = len(batches[k]) // 2
        batches[k:k + 1] = [batches[k][:half], batches[k][half:]]
    return batches


def token_budget_batches(lengths: list[int], budget: int, padded: bool, seed: int,
                         world_size: int = 1) -> list[list[int]]:
    """The run's batches of row indices (see the module docstring), each within `budget` tokens."""
    too_long = [i for i, n in enumerate(lengths) if n > budget]
    if too_long:
        raise ValueError(f"row {too_long[0]} has {lengths[too_long[0]]} tokens, more than the token budget {budget}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    if padded:
        order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep the seeded order
        batches = padded_batches(order, lengths, budget)
    else:
        batches = [[order[j] for j in b] for b in bfd_bins([lengths[i] for i in order], budget)]
    return split_to_multiple(batches, world_size)


class TokenBudgetSampler:
    """A batch sampler (DataLoader's `batch_sampler`) over the run's token-budget batches, reshuffled per epoch."""

    def __init__(self, lengths: list[int], budget: int, padded: bool, seed: int, world_size: int = 1) -> None:
        self.batches = token_budget_batches(lengths, budget, padded, seed, world_size)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def epoch_order(self, epoch: int) -> list[int]:
        """The order the batches are visited in that epoch (the same in every process)."""
        order = list(range(len(self.batches)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def __iter__(self) -> Iterator[list[int]]:
        for k in self.epoch_order(self.epoch):
            yield list(self.batches[k])
