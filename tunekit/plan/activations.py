"""Activation memory of one training micro-batch: the tensors autograd keeps from forward for backward, the
logits and loss buffers, and how the backward pass trades them for gradients.

Counted per token, in elements, from the ops of a Llama-shaped decoder layer (the shape every causal LM in
transformers shares: RMSNorm, q/k/v/o projections, rotary embeddings, attention, a gated MLP):
- per layer: the residual input and the two RMSNorms' saved tensors (5 x hidden with q and o inputs), k and v
  (2 x kv_heads x head_dim), the gated MLP (gate, its activation, up, their product: 4 x intermediate);
  eager attention adds the softmax probabilities (heads x sequence per token) and repeated k/v; sdpa / flash
  keep only a logsumexp per head;
- adapters add their low-rank inputs/outputs (LoRA: r per adapted linear; LoReFT: r per intervened layer);
- outside the layers: the embeddings and the final norm (4 x hidden);
- logits and the loss: the logits, log-softmax output, its gradient and the logits' gradient, all float32
  (4 x vocab x 4 bytes), plus the logits in the model dtype when that is not float32.
Activation checkpointing (per decoder layer, as transformers does it) keeps each layer's input and recomputes
one layer at a time in backward. In backward, gradients appear as activations are freed: the step's peak is
the larger of (activations + logits) and (all gradients + the last layer's activations and the embedding
gradient), not their sum. Checked against torch's CPU allocator (tests/unit/test_plan_activations.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False  # input embedding shared with the output head

    @classmethod
    def of(cls, config: Any) -> Shape:
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        return cls(c.hidden_size, c.num_hidden_layers, heads, getattr(c, "num_key_value_heads", None) or heads,
                   head_dim, getattr(c, "intermediate_size", None) or 4 * c.hidden_size, c.vocab_size,
                   bool(getattr(c, "tie_word_embeddings", False)))


@dataclass(frozen=True)
class Micro:
    """One micro-batch on one device and how it is computed."""

    batch: int
    seq: int
    element_bytes: int  # activations' dtype
    attention: str  # eager | sdpa | flash_attention_2 ...
    checkpointing: bool
    adapter_elements: int = 0  # extra elements per token per layer (LoRA ranks, LoReFT rank ...)
    norms_trainable: bool = False  # trainable RMSNorm weights keep their normalised inputs too

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


def layer_elements(s: Shape, m: Micro) -> int:
    """Elements per token one decoder layer keeps for backward."""
    n = (5 + 2 * m.norms_trainable) * s.hidden + 2 * s.kv_heads * s.head_dim + 4 * s.intermediate + m.adapter_elements
    if m.attention == "eager":
        n += s.heads * m.seq + 2 * (s.heads - s.kv_heads) * s.head_dim
    else:
        n += s.heads  # logsumexp
    return n


def logits_bytes(s: Shape, m: Micro) -> int:
    """Logits and cross-entropy buffers at the start of backward (float32 upcast, as transformers' loss does)."""
    return m.tokens * s.vocab * (16 + (m.element_bytes if m.element_bytes != 4 else 0))


def layer_bytes(s: Shape, m: Micro) -> int:
    return layer_elements(s, m) * m.tokens * m.element_bytes


def activation_bytes(s: Shape, m: Micro) -> int:
    """Bytes autograd keeps for backward, logits aside: every layer's tensors, or with checkpointing each
    layer's input plus the one layer being recomputed."""
    outside = 4 * s.hidden * m.tokens * m.element_bytes
    if m.checkpointing:
        return outside + s.layers * s.hidden * m.tokens * m.element_bytes + layer_bytes(s, m)
    return outside + s.layers * layer_bytes(s, m)


def working_bytes(s: Shape, m: Micro) -> int:
    """A layer's backward working set: the gradients flowing through it (hidden + intermediate per token), and
    with eager attention the float32 gradient of the attention probabilities."""
    n = s.hidden + s.intermediate + (s.heads * m.seq if m.attention == "eager" else 0)
    return n * m.tokens * max(m.element_bytes, 4 if m.attention == "eager" else m.element_bytes)


def step_peak(s: Shape, m: Micro, gradients: int, embedding_grad: int) -> int:
    """The most one forward + backward holds at once (above weights and optimizer state): the largest phase of
    start of backward (activations + logits buffers), with checkpointing the recomputation of the last layer (the
    output head's gradient made), and end of backward (every gradient, the first layer's tensors and working set, the
    embedding's dense gradient)."""
    act, logits, layer, work = activation_bytes(s, m), logits_bytes(s, m), layer_bytes(s, m), working_bytes(s, m)
    phases = [act + logits - (layer if m.checkpointing else 0), gradients + embedding_grad + layer + work]
    if m.checkpointing:
        phases.append(act + work + embedding_grad)  # the first recomputed layer: the head's gradient made
    return max(phases)
