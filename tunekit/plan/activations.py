"""Activation memory of one training micro-batch: the tensors autograd keeps from forward for backward, the
logits and loss buffers, and how the backward pass trades them for gradients.

Counted per token, in elements, from the ops of a Llama-shaped decoder layer (the shape every causal LM in
transformers shares: RMSNorm, q/k/v/o projections, rotary embeddings, attention, a gated MLP):
- per layer: the residual input and the two RMSNorms' saved tensors (5 x hidden with q and o inputs), k and v
  (2 x kv_heads x head_dim), the gated MLP (gate, its activation, up, their product: 4 x intermediate);
  eager attention adds the softmax probabilities (heads x sequence per token) and repeated k/v; sdpa / flash
  keep only a logsumexp per head;
- adapters add their low-rank inputs/outputs (LoRA: r per adapted linear; LoReFT: r per intervened layer);
- outside the layers: the embedding output and the final norm (4 x hidden); with checkpointing only the final
  norm's input (the last layer's output, 1 x hidden; 2 when the norm trains): the embedding output is then layer
  0's kept input; eager attention's causal mask is kept too, as an input of the checkpointed layers;
- the LM head and the loss, as the trainer computes them (`head_bytes`): TRL's fused LM head (SFT, DPO, KTO) never
  materialises the (tokens x vocab) logits, it projects in tiles into one fixed buffer (`fused_head_bytes`); the
  kinds that take the model's logits (ORPO, CPO, online DPO) hold the logits, log-softmax output, its gradient and
  the logits' gradient, all float32 (4 x vocab x 4 bytes per token), plus the logits in the model dtype when that is
  not float32 (`logits_bytes`).
Activation checkpointing (per decoder layer, as transformers does it) keeps each layer's input and recomputes
one layer at a time in backward. In backward, gradients appear as activations are freed: the step's peak is
the larger of (activations + logits) and (all gradients + the last layer's activations and the embedding
gradient), not their sum. Checked against torch's CPU allocator over the trainer's own training step
(tests/e2e/test_plan_activations.py).
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
    fused_head: bool = True  # the loss goes through TRL's fused LM head (else: the model's full logits)
    head_trainable: bool = False  # the output head's weight gets a gradient
    torch_tiles: bool = False  # the fused head folds its tiles with torch ops (no Triton: CPU), not a kernel

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


FUSED_TOKEN_TILE = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE: tokens per projection tile
FUSED_VOCAB_TILE = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE: vocabulary columns per tile
TORCH_TILE_TEMPS = 7  # float32 tiles `_backward_tile` holds at once: y, z, log_p, p, grad, (target - p), the product
STAT_VECTORS = 4  # float32 per-token vectors live at the backward peak: log_z, entropy (saved), log-probs, their gradient


def logits_bytes(s: Shape, m: Micro) -> int:
    """Logits and cross-entropy buffers at the start of backward (float32 upcast, as transformers' loss does)."""
    return m.tokens * s.vocab * (16 + (m.element_bytes if m.element_bytes != 4 else 0))


def fused_head_bytes(s: Shape, m: Micro) -> int:
    """TRL's fused LM head (trl.trainer.utils.add_fused_lm_head, TRL 1.16) at its backward, where it holds most:
    - the hidden states it scores, copied to (N x hidden) and saved for backward (N = batch x (seq - 1): every
      position with a next-token label; on CUDA only the trained ones, so this is the upper bound);
    - the projection buffer, (min(N, 4096) x 32768) in the compute dtype: allocated at the full tile width even
      when the vocabulary is narrower;
    - the float32 gradient accumulators of the hidden states (N x hidden) and, when the head trains, of its weight
      (vocab x hidden);
    - without Triton (CPU) the tiles are folded by torch ops: 7 float32 tiles of (min(N, 4096) x min(vocab,
      32768)) and a bool one live at once in backward, one more float32 tile when the compute dtype is not float32
      (`tile.float()` copies); the Triton kernels fold in registers;
    - four per-token float32 vectors (log_z and the entropy saved for backward, the log-probs, their gradient)."""
    n = m.batch * max(m.seq - 1, 1)
    rows, cols = min(n, FUSED_TOKEN_TILE), min(s.vocab, FUSED_VOCAB_TILE)
    total = n * s.hidden * m.element_bytes + rows * FUSED_VOCAB_TILE * m.element_bytes
    total += 4 * (n * s.hidden + m.head_trainable * s.vocab * s.hidden) + STAT_VECTORS * 4 * n
    if m.torch_tiles:
        total += rows * cols * (4 * (TORCH_TILE_TEMPS + (m.element_bytes != 4)) + 1)
    return total


def head_bytes(s: Shape, m: Micro) -> int:
    """The LM head's and the loss's buffers at the start of backward, as the trainer computes them."""
    return fused_head_bytes(s, m) if m.fused_head else logits_bytes(s, m)


def layer_bytes(s: Shape, m: Micro) -> int:
    return layer_elements(s, m) * m.tokens * m.element_bytes


def activation_bytes(s: Shape, m: Micro) -> int:
    """Bytes autograd keeps for backward, logits aside: every layer's tensors, or with checkpointing each
    layer's input plus the one layer being recomputed."""
    hidden = s.hidden * m.tokens * m.element_bytes
    if m.checkpointing:
        # the layers' inputs (the first is the embedding output), the last layer's output, with a trainable final
        # norm its normalised input; eager attention's float causal mask (batch x seq x seq) is an input of every
        # checkpointed layer, so it is kept until backward (sdpa and flash take is_causal on unpadded rows: no mask)
        mask = m.batch * m.seq * m.seq * m.element_bytes if m.attention == "eager" else 0
        return (s.layers + 1 + m.norms_trainable) * hidden + layer_bytes(s, m) + mask
    outside = 4 * hidden
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
    act, logits, layer, work = activation_bytes(s, m), head_bytes(s, m), layer_bytes(s, m), working_bytes(s, m)
    phases = [act + logits - (layer if m.checkpointing else 0), gradients + embedding_grad + layer + work]
    if m.checkpointing:
        phases.append(act + work + embedding_grad)  # the first recomputed layer: the head's gradient made
    return max(phases)
