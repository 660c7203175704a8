"""FLOPs per trained token, and time: tokens / expected throughput from the GPU's peak dense bf16 FLOP/s and a
stated MFU. The same FLOPs per token turn a run's measured tokens/s into its MFU (`tunekit/metrics.py`).

FLOPs per trained token, N the parameters that do matmuls (every weight but the input embedding table):
- full fine-tuning: 6N (forward 2N, backward 4N: input and weight gradients); methods that keep the full-model
  training loop but train part of it (freeze, LISA, HFT, GaLore) are counted as full too;
- a frozen base with adapters (LoRA, QLoRA, prompt/prefix tuning, ReFT ...), the LoRA-adjusted count (as NeMo's
  FLOPs counter does): the frozen base N_base costs 2N_base forward + 2N_base backward (activation gradients
  only, no weight gradients), the A trainable adapter parameters cost 6A like a full model (2A + 4A), so
  4 N_base + 6A (N_base = N - A; under 1% above 4N at usual ranks);
- attention scores and values: 6 x layers x sequence x heads x head_dim (forward 2x, causal: half of the full
  square; backward twice the forward), both cases; the sequence is per example (`attention_length`);
- activation checkpointing: one more forward (2N + 2A + the forward attention).
A 4-bit base (QLoRA) counts the same model FLOPs; dequantization is not counted.
MFU (model FLOPs utilisation) assumed by `tunekit plan`: 40% for bf16 matmuls, 25% with a 4-bit base
(dequantization in every matmul); a run measures its own (summary.json `throughput`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tunekit.plan.activations import Shape

MFU = {"default": 0.40, "quantized": 0.25}
FULL_METHODS = ("full", "freeze", "lisa", "hft", "galore")


def matmul_params(total_params: int, s: Shape, tied: bool) -> int:
    """Parameters used in matmuls: all but the input embedding table (a tied one also serves as the head)."""
    return total_params - (0 if tied else s.vocab * s.hidden)


def flops_per_token(n: int, s: Shape, seq: float, full: bool, checkpointing: bool, adapter: int = 0) -> float:
    """`n`: matmul parameters (with `full` False: the frozen base's), `adapter`: trainable adapter parameters."""
    attention = 2.0 * s.layers * seq * s.heads * s.head_dim  # forward, causal
    forward = 2.0 * n + 2.0 * adapter + attention
    backward = (4.0 * n if full else 2.0 * n) + 4.0 * adapter + 2 * attention
    return forward + backward + (forward if checkpointing else 0.0)


def attention_length(lengths: Iterable[int]) -> float:
    """The sequence length attention FLOPs are counted at: token-weighted mean example length (sum s^2 / sum s).

    A token of an example of length s attends over that example only (packed rows restart attention at each
    example; padding is not model work), so the per-token attention cost averages s over the tokens."""
    total = squares = 0
    for n in lengths:
        total, squares = total + n, squares + n * n
    return squares / total if total else 0.0


def training_flops(config: Any, params: dict, method: str, checkpointing: bool, seq: float) -> dict:
    """FLOPs per trained token of a run: `params` the {trainable, total} counts (`MethodPlan.parameters`), `seq`
    its `attention_length`."""
    s = Shape.of(config)
    full = method in FULL_METHODS
    n = matmul_params(params["total"], s, s.tied)
    adapter = 0 if full else min(params["trainable"], n)
    flops = flops_per_token(n - adapter, s, seq, full, checkpointing, adapter)
    return {"flops_per_token": round(flops), "flops_formula": formula(full, checkpointing), "attention_seq": round(seq, 1)}


def formula(full: bool, checkpointing: bool) -> str:
    base = "6N + attention (full)" if full else "4N_base + 6A + attention (frozen base N_base, adapters A)"
    return base + (" + one forward (activation checkpointing)" if checkpointing else "")


def timing(tokens: int, flops_token: float, tflops: float, world: int, quantized: bool) -> dict:
    mfu = MFU["quantized" if quantized else "default"]
    per_device = tflops * 1e12 * mfu / flops_token
    seconds = tokens / (per_device * world) if tokens else None
    return {"flops_per_token": flops_token, "mfu_assumed": mfu, "tokens_per_second_per_device": round(per_device),
            "tokens": tokens, "seconds": round(seconds, 1) if seconds is not None else None}
