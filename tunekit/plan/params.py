"""The exact parts of the memory: weights, gradients and optimizer state, from the recipe's model and method
built on the meta device (`methods.registry.build_on_meta`: the real model class and the real method, nothing
allocated).

The dtypes follow what loading does: the model in its resolved dtype; peft keeps adapter weights in float32
(autocast_adapter_dtype); QLoRA stores each quantized `nn.Linear` weight as packed 4-bit (or 8-bit) data plus
bitsandbytes' quantization state, and `prepare_model_for_kbit_training` casts every other 16-bit parameter to
float32, after which TRL's trainers cast the trainable adapter weights to bfloat16 (DoRA's magnitude aside).
Gradients have each trainable parameter's shape and dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunekit.methods.registry import build_on_meta

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
BLOCKSIZE_4BIT = 64  # bitsandbytes' default 4-bit block size (one absmax per block)
NESTED_BLOCKSIZE = 256  # double quantization: one float32 absmax per 256 quantized absmax values


@dataclass
class Param:
    name: str
    shape: tuple[int, ...]
    element_bytes: int
    trainable: bool
    quantized: bool = False  # a base weight bitsandbytes quantizes under qlora

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ParamTable:
    params: list[Param]
    buffer_bytes: int
    config: object  # the transformers config (model shape)

    @property
    def trainable(self) -> list[Param]:
        return [p for p in self.params if p.trainable]

    def count(self, trainable_only: bool = False) -> int:
        return sum(p.numel for p in (self.trainable if trainable_only else self.params))


def model_dtype(name: str, device: str) -> str:
    """The dtype `model.dtype: auto` resolves to on the target (bfloat16 on a GPU, float32 on CPU)."""
    return ("bfloat16" if device == "cuda" else "float32") if name == "auto" else name


def param_table(recipe: Recipe, device: str = "cuda") -> ParamTable:
    """Every parameter of the model + method with the shape and element size it has when training starts."""
    import torch

    dtype = model_dtype(recipe.model.dtype, device)
    plan, quantizable = build_on_meta(recipe, getattr(torch, dtype))
    qlora = recipe.method.name == "qlora"
    params = []
    for name, p in plan.model.named_parameters():
        quantized = qlora and id(p) in quantizable
        size = p.element_size()
        if qlora and not quantized and size == 2:
            size = 4  # prepare_model_for_kbit_training casts the other 16-bit parameters to float32
        if qlora and p.requires_grad and "lora_magnitude_vector" not in name:
            size = 2  # TRL's trainers cast the adapters of a quantized model to bfloat16 (QLoRA paper, section 3)
        params.append(Param(name, tuple(p.shape), size, p.requires_grad, quantized))
    buffers = sum(b.numel() * b.element_size() for b in plan.model.buffers()) + _orthogonal_bases(plan.model)
    return ParamTable(params, buffers, plan.model.config)


def _orthogonal_bases(model: Any) -> int:
    """torch's orthogonal parametrization (LoReFT's R) keeps a square `base` buffer of the larger side, which it
    only creates from real values: absent on the meta device, counted here."""
    total = 0
    for module in model.modules():
        for plist in (getattr(module, "parametrizations", None) or {}).values():
            for step in plist:
                if step.__class__.__name__ == "_Orthogonal" and getattr(step, "base", None) is None:
                    total += max(plist.original.shape) ** 2 * plist.original.element_size()
    return total


def quantized_bytes(numel: int, rows: int, bits: int, double_quant: bool) -> int:
    """Bytes of one bitsandbytes-quantized weight: packed data + quantization state.

    4-bit: numel/2 bytes of packed codes, the 16-value NF4/FP4 code book (float32), and one absmax per 64-value
    block: float32, or (double quantization) uint8 plus per 256 blocks a float32 absmax, a 256-entry float32
    code book and a float32 offset. 8-bit (LLM.int8): one byte per value plus a float32 scale per row."""
    if bits == 8:
        return numel + 4 * rows
    blocks = math.ceil(numel / BLOCKSIZE_4BIT)
    state = 16 * 4
    if double_quant:
        state += blocks + 4 * math.ceil(blocks / NESTED_BLOCKSIZE) + 256 * 4 + 4
    else:
        state += 4 * blocks
    return math.ceil(numel / 2) + state


def weight_bytes(table: ParamTable, recipe: Recipe) -> int:
    """Bytes of every parameter and buffer as they sit in memory (quantized weights with their state)."""
    m = recipe.method
    total = table.buffer_bytes
    for p in table.params:
        if p.quantized:
            total += quantized_bytes(p.numel, p.shape[0], m.bits, m.bits == 4 and m.double_quant)
        else:
            total += p.numel * p.element_bytes
    return total


def gradient_bytes(table: ParamTable) -> int:
    """One gradient per trainable parameter, in the parameter's dtype."""
    return sum(p.numel * p.element_bytes for p in table.trainable)
