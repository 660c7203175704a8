"""Activation memory: the planner's step peak (activations + LM head/loss buffers + gradients, less their overlap) vs
the peak measured in torch's CPU allocator over one training step of tunekit's SFT trainer, within 25%: the path
training takes (TRL's fused LM head: the logits are never materialised; on CPU its tiles are folded by torch ops).

Measurement (`tunekit.plan.measure.cpu_peak`): torch's profiler with profile_memory records every allocation and
free of torch's CPU allocator with its size; the running sum's maximum above the bytes live at the start is the
step's peak. The step runs once before measuring, then gradients are cleared (set to None, as the Trainer does),
so the measured step starts from weights (+ optimizer state) as a training step does. The optimizer step is not
measured (the planner counts its state, not its temporaries). Each trace is checked: its allocations less its frees
must be the gradients' bytes the step leaves, else the profiler lost events and the step is traced again (on a
loaded machine, about one trace in 16 to 60 starts part-way through the step and shows a peak far too low).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tunekit.recipe.schema import Recipe

GRID = [(*shape, attn, ckpt) for shape, attn, ckpt in itertools.product(
    [(2, 64), (4, 256)], ["sdpa", "eager"], [False, True])]


def recipe_for(model: str, method: str, attn: str, batch: int, ckpt: bool) -> Recipe:
    return Recipe.model_validate({
        "model": {"path": f"builtin:{model}", "dtype": "float32", "attn_implementation": attn},
        "data": {"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages"}]},
        "method": {"name": "lora", "r": 16, "target_modules": "all-linear"} if method == "lora" else {"name": method},
        "trainer": {"kind": "sft", "per_device_batch_size": batch, "gradient_checkpointing": ckpt},
        "output": {"dir": "unused"},
    })


def measured_peak(recipe: Recipe, batch: int, seq: int, tmp: Path) -> int:
    """The peak of one training step as `tunekit train` takes it: the recipe's model and method, tunekit's SFT trainer
    (TRL's SFTTrainer: the loss through its fused LM head), activation checkpointing switched on as Trainer.train()
    switches it on, and the trainer's own training_step (compute_loss, then backward). Every position is trained."""
    import torch
    from datasets import Dataset

    from tunekit.methods.registry import build_for_training
    from tunekit.model.load import load_tokenizer, resolve_model_path
    from tunekit.plan.measure import cpu_peak
    from tunekit.trainers import sft

    path = resolve_model_path(recipe.model)
    ids = torch.randint(0, 500, (batch, seq), generator=torch.Generator().manual_seed(0)).tolist()
    trainer = sft.build(recipe, build_for_training(recipe, path).model, load_tokenizer(recipe.model, path),
                        Dataset.from_dict({"input_ids": ids, "labels": ids}), None, str(tmp), [])
    model, args = trainer.model, trainer.args
    assert args.activation_checkpointing == recipe.trainer.gradient_checkpointing
    if args.activation_checkpointing:  # what Trainer.train() does before the first step
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=args.activation_checkpointing_kwargs or None)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    inputs = next(iter(trainer.get_train_dataloader()))

    def step() -> None:
        trainer.training_step(model, dict(inputs))

    def clear() -> None:
        model.zero_grad(set_to_none=True)

    step()  # a first step outside the trace: the measured one starts from weights (+ optimizer state) only
    return cpu_peak(step, leaves=lambda: grad_bytes(model), reset=clear)


def grad_bytes(model) -> int:
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)


def predicted_peak(recipe: Recipe, seq: int) -> tuple[int, int]:
    """(the step's predicted peak, the LM head's part of it)."""
    from tunekit.plan.estimate import estimate
    from tunekit.plan.params import param_table

    parts = estimate(recipe, param_table(recipe, "cpu"), "cpu", seq).gpu
    return parts["activations"] + parts["logits"] + parts["gradients"] + parts["overlap"], parts["logits"]


# The bound. Worst seen (2026-12-03, torch 2.13 CPU, TRL 1.16): -0.9% on the whole peak (small-llama, full);
# -2.6% on the peak less the fused head (see the test).
BOUND = {"small-llama": 0.25, "tiny-llama": 0.25}


@pytest.mark.full
@pytest.mark.parametrize("model", ["tiny-llama", "small-llama"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_step_peak_within_bound(model: str, method: str, tmp_path: Path) -> None:
    """The whole peak within the bound, and the peak less the fused head's buffers too: on these small models the
    head's fixed projection buffer (min(tokens, 4096) x 32768 floats) is most of the peak, so the rest (activations,
    gradients) gets its own check. The head's bytes are the kernel's own (test below), so the measured peak less
    them is the measured rest."""
    errors, rest = {}, {}
    for batch, seq, attn, ckpt in GRID:
        recipe = recipe_for(model, method, attn, batch, ckpt)
        predicted, head = predicted_peak(recipe, seq)
        real = measured_peak(recipe, batch, seq, tmp_path)
        errors[(batch, seq, attn, ckpt)] = predicted / real - 1
        rest[(batch, seq, attn, ckpt)] = (predicted - head) / (real - head) - 1
    for name, errs in (("peak", errors), ("peak less the head", rest)):
        worst = max(errs.values(), key=abs)
        assert abs(worst) <= BOUND[model], (name, {k: f"{v:+.1%}" for k, v in errs.items()})


@pytest.mark.full
@pytest.mark.parametrize(("tokens", "hidden", "vocab", "head_trains"), [
    (126, 64, 518, False), (1020, 64, 518, True), (300, 64, 40000, False), (5000, 32, 518, False)])
def test_fused_head_bytes_are_what_the_kernel_allocates(tokens: int, hidden: int, vocab: int,
                                                        head_trains: bool) -> None:
    """`fused_head_bytes` against torch's CPU allocator over TRL's chunked log-prob function, forward and backward,
    called as SFT calls it: one and two token tiles, a vocabulary narrower and wider than the 32768-column tile,
    the head's weight frozen and trained. The hidden states are this call's input, so they are left out of the
    prediction. Within 0.1%: the sizes are exact (seen: within 12 bytes of 18 MB to 600 MB), what is left is a
    few scalars (the loss and its gradient)."""
    import torch
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from tunekit.plan.activations import FUSED_VOCAB_TILE, Micro, Shape, fused_head_bytes
    from tunekit.plan.measure import cpu_peak

    assert _CHUNKED_LOGPROB_CHUNK_SIZE == FUSED_VOCAB_TILE
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, requires_grad=head_trains)
    targets = torch.randint(0, vocab, (tokens,), generator=g)

    def step() -> None:
        log_probs = ChunkedLogProbFunction.apply(h, w, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                                 ("log_probs", "entropy", "is_top1"))[0]
        (-log_probs.sum() / tokens).backward()

    def clear() -> None:
        h.grad = w.grad = None

    real = cpu_peak(step, leaves=lambda: sum(t.grad.numel() * 4 for t in (h, w) if t.grad is not None), reset=clear)
    shape = Shape(hidden, 1, 1, 1, hidden, 4 * hidden, vocab)
    micro = Micro(1, tokens + 1, 4, "sdpa", False, head_trainable=head_trains, torch_tiles=True)
    predicted = fused_head_bytes(shape, micro) - tokens * hidden * 4
    assert abs(predicted / real - 1) < 0.001, (predicted, real)
