"""`sft`: supervised fine-tuning through TRL's SFTTrainer.

tunekit's data stage already produced `input_ids` and `labels` (loss mask applied), so TRL's own
dataset preparation is skipped; TRL's collator pads and batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekit.trainers.training_args import training_kwargs

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def build(recipe: Recipe, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, checkpoint_dir: str,
          callbacks: list) -> Any:
    from trl import SFTConfig, SFTTrainer

    # Packed rows carry `seq_lengths`; TRL's padding-free collator turns them into per-example position ids
    # (tunekit packs and truncates itself, so TRL's packing and max_length stay off).
    padding_free = recipe.data.packing or recipe.data.padding_free
    args = SFTConfig(
        **training_kwargs(recipe, checkpoint_dir, eval_ds is not None),
        max_length=None if padding_free else recipe.data.max_length,
        dataset_kwargs={"skip_prepare_dataset": True},
        packing=False,
        padding_free=padding_free,
        # NEFTune: transformers hooks the input embeddings for the duration of train(); the hook adds noise only
        # when the embedding module is in training mode, so evaluation and generation see clean embeddings.
        neftune_noise_alpha=recipe.trainer.neftune_alpha,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
