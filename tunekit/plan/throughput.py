"""Time: tokens / expected throughput, from the GPU's peak dense bf16 FLOP/s and a stated MFU.

FLOPs per trained token, N the parameters that do matmuls (every weight but the input embedding table):
- full fine-tuning: 6N (forward 2N, backward 4N: input and weight gradients);
- a frozen base with adapters (LoRA, QLoRA, prompt/prefix tuning, ReFT ...): 4N (no weight gradients for the
  base; the adapters' own FLOPs are under 1% at usual ranks);
- attention scores and values: 6 x layers x sequence x hidden (causal: half of the full square), both cases;
- activation checkpointing: one more forward (2N + the forward attention).
MFU (model FLOPs utilisation) assumed: 40% for bf16 matmuls, 25% with a 4-bit base (dequantization in every
matmul); measured throughput replaces these assumptions once a run has happened (summary.json).
"""

from __future__ import annotations

from tunekit.plan.activations import Shape

MFU = {"default": 0.40, "quantized": 0.25}
FULL_METHODS = ("full", "freeze", "lisa", "hft", "galore")


def matmul_params(total_params: int, s: Shape, tied: bool) -> int:
    """Parameters used in matmuls: all but the input embedding table (a tied one also serves as the head)."""
    return total_params - (0 if tied else s.vocab * s.hidden)


def flops_per_token(n: int, s: Shape, seq: int, full: bool, checkpointing: bool) -> float:
    attention = 2.0 * s.layers * seq * s.heads * s.head_dim  # forward, causal
    forward = 2.0 * n + attention
    backward = (4.0 * n if full else 2.0 * n) + 2 * attention
    return forward + backward + (forward if checkpointing else 0.0)


def timing(tokens: int, flops_token: float, tflops: float, world: int, quantized: bool) -> dict:
    mfu = MFU["quantized" if quantized else "default"]
    per_device = tflops * 1e12 * mfu / flops_token
    seconds = tokens / (per_device * world) if tokens else None
    return {"flops_per_token": flops_token, "mfu_assumed": mfu, "tokens_per_second_per_device": round(per_device),
            "tokens": tokens, "seconds": round(seconds, 1) if seconds is not None else None}
