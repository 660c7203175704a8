"""`sft`: supervised fine-tuning through TRL's SFTTrainer.

tunekit's data stage already produced `input_ids` and `labels` (loss mask applied), so TRL's own
dataset preparation is skipped; TRL's collator pads and batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekit.errors import UserError
from tunekit.methods import interventions
from tunekit.trainers import mezo
from tunekit.trainers.batching import with_token_budget
from tunekit.trainers.training_args import resolved_kernels, training_kwargs

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def build(recipe: Recipe, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, checkpoint_dir: str,
          callbacks: list) -> Any:
    from trl import SFTConfig, SFTTrainer

    if recipe.data.masked_thought:
        train_ds = masked_thought(train_ds, recipe.data.masked_thought, mask_token_id(tokenizer))

    # Packed rows carry `seq_lengths`; TRL's padding-free collator turns them into per-example position ids
    # (tunekit packs and truncates itself, so TRL's packing and max_length stay off).
    padding_free = recipe.data.packing or recipe.data.padding_free
    kwargs = training_kwargs(recipe, checkpoint_dir, eval_ds is not None)
    trainer_cls: type = SFTTrainer
    if recipe.trainer.optim == "mezo":  # the update happens in training_step; the optimizer gets no gradients
        kwargs.update(optim="sgd", max_grad_norm=0.0, weight_decay=0.0)
        trainer_cls = mezo.trainer_class(SFTTrainer, recipe.trainer.mezo_eps)
    if getattr(recipe.method, "positions", "all") in ("last", "first_last"):
        trainer_cls = with_label_positions(trainer_cls)
    if recipe.data.tokens_per_batch and not recipe.data.packing:  # packed: the budget set the rows per batch
        trainer_cls = with_token_budget(trainer_cls, recipe, train_ds)
    # Liger: TRL keeps its fused LM head for the loss and applies Liger's layer kernels (RMSNorm, SwiGLU, RoPE)
    kwargs["use_liger_kernel"] = resolved_kernels(recipe.trainer.kernels, model.config.model_type) == "liger"
    args = SFTConfig(
        **kwargs,
        max_length=None if padding_free else recipe.data.max_length,
        dataset_kwargs={"skip_prepare_dataset": True},
        packing=False,
        padding_free=padding_free,
        # NEFTune: transformers hooks the input embeddings for the duration of train(); the hook adds noise only
        # when the embedding module is in training mode, so evaluation and generation see clean embeddings.
        neftune_noise_alpha=recipe.trainer.neftune_alpha,
    )
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def with_label_positions(base: type) -> type:
    """The trainer class whose loss hands the batch's labels to LoReFT's `last` positions (TRL's SFTTrainer calls
    the model without them)."""
    class LabelPositions(base):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict, *args: Any, **kwargs: Any) -> Any:
            with interventions.labels_for_positions(model, inputs.get("labels")):
                return super().compute_loss(model, inputs, *args, **kwargs)

    return LabelPositions


def mask_token_id(tokenizer: Any) -> int:
    """Masked Thought's replacement token: unk, else pad (the paper's code uses a dedicated mask/pad token)."""
    for tid in (tokenizer.unk_token_id, tokenizer.pad_token_id):
        if tid is not None:
            return int(tid)
    raise UserError("data.masked_thought: the tokenizer has neither an unk nor a pad token to mask with")


def masked_thought(ds: Any, fraction: float, mask_id: int) -> Any:
    """Masked Thought (seeds 003/004): the training rows, read through a transform that replaces each trained
    token (label != -100) in `input_ids` by `mask_id` with probability `fraction`; `labels` are untouched.

    A datasets transform runs every time a row is read, so each epoch (and each step) draws new masks. The draws
    use torch's global generator, which transformers seeds with trainer.seed and saves in every checkpoint (the
    data loader runs in the main process: dataloader_num_workers is 0).
    """
    import torch

    def transform(batch: dict) -> dict:
        masked = []
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            x = torch.as_tensor(ids)
            hit = (torch.as_tensor(labels) != -100) & (torch.rand(x.shape) < fraction)
            masked.append(torch.where(hit, mask_id, x).tolist())
        return {**batch, "input_ids": masked}

    return ds.with_transform(transform)
