"""The `model:` recipe section: which base model, and how to load it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunekit.recipe.base import PathStr, Section


class ModelConfig(Section):
    path: PathStr = Field(
        description="Base model: a hub id (`org/name`), a local directory, or `builtin:NAME` for an offline "
        "tiny model (randomly initialised, for smoke tests only; see `tunekit/model/builtin.py`)."
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) of the model.")
    tokenizer: PathStr | None = Field(
        default=None, description="Tokenizer to load if different from `path` (hub id or local directory)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Weight dtype. `auto`: bfloat16 on a GPU that supports it, float16 on older GPUs, float32 on CPU.",
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3",
                                 "flex_attention"] = Field(
        default="auto",
        description="Attention kernel passed to `from_pretrained`. `auto`: flash_attention_2 (varlen kernels: packed "
                    "documents never attend to each other, no padding computed) on a CUDA GPU of compute capability "
                    ">= 8.0 with flash-attn installed and 16-bit weights; else sdpa (packed rows get per-document "
                    "masks from their position ids), or eager for an architecture without an sdpa kernel (Gemma 2).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run Python code shipped with a hub model. Off by default: turn on only for models you trust.",
    )
    init_seed: int = Field(
        default=0, description="Seed for the random initialisation of `builtin:` models (ignored for real models)."
    )
