"""Token-budget batches in the trainer (`data.tokens_per_batch` on unpacked rows; packed rows need none: the budget
sets the rows per batch, recipe/schema.py).

transformers' Trainer takes a batch sampler only for its own BatchRebalanceSampler, so the trainer class gets a
`get_train_dataloader` that builds the DataLoader on `TokenBudgetSampler` (data/token_batches.py), prepared by
accelerate as every training DataLoader is. With several processes accelerate wraps it in its `BatchSamplerShard`,
which deals batch i to rank i % world (the sampler makes the count a multiple of the world size). The loss is the
per-token mean over the optimizer step: transformers counts the labelled tokens of all micro-batches of the step
(and of all ranks) as `num_items_in_batch` and TRL's loss divides the summed token losses by it, so a batch of
many short rows weighs by its tokens, not by its rows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tunekit.data.token_batches import TokenBudgetSampler

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def row_lengths(ds: Any) -> list[int]:
    """Each row's `input_ids` length, read as Arrow list lengths (no ids copied)."""
    import pyarrow.compute as pc

    return pc.list_value_length(ds.with_format("arrow")["input_ids"]).to_pylist()


def with_token_budget(base: type, recipe: Recipe, train_ds: Any) -> type:
    """`base` (a TRL trainer class) whose training batches are the token-budget batches of `train_ds`."""
    from transformers import TrainerCallback

    budget, seed = recipe.data.tokens_per_batch, recipe.data.data_seed(recipe.trainer.seed)
    padded = not (recipe.data.packing or recipe.data.padding_free)
    lengths = row_lengths(train_ds)

    class EpochOfSampler(TrainerCallback):  # type: ignore[misc]
        """Sets the sampler's epoch from the step count when an epoch begins: transformers' own `set_epoch` does
        not reach a batch sampler behind accelerate's shard wrapper and a resume's skip wrapper together."""

        def __init__(self, sampler: TokenBudgetSampler, steps_per_epoch: int) -> None:
            self.sampler, self.steps_per_epoch = sampler, steps_per_epoch

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.sampler.set_epoch(state.global_step // self.steps_per_epoch)

    class TokenBudget(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.token_sampler = TokenBudgetSampler(lengths, budget, padded, seed, max(1, self.args.world_size))
            per_rank = len(self.token_sampler) // max(1, self.args.world_size)
            self.add_callback(EpochOfSampler(self.token_sampler,
                                             max(1, math.ceil(per_rank / self.args.gradient_accumulation_steps))))

        def get_train_dataloader(self) -> Any:
            from torch.utils.data import DataLoader

            loader = DataLoader(self.train_dataset, batch_sampler=self.token_sampler, collate_fn=self.data_collator,
                                num_workers=0, pin_memory=self.args.dataloader_pin_memory)
            return self.accelerator.prepare(loader)

    return TokenBudget
