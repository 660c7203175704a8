"""Offline builtin models: tiny Llama-shaped configs plus the tokenizer shipped in tunekit/assets/tokenizer.

`builtin:NAME` models are **randomly initialised** (seeded by `model.init_seed`). They exist so the
quickstart, the tests and CI run with no network; they learn the quickstart data's patterns in a
minute, but they know nothing else. To keep one loading path, a builtin is materialised once into a
cache directory with `save_pretrained` and then loaded with the real `from_pretrained`, like any
local model.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunekit.errors import UserError, did_you_mean
from tunekit.paths import asset, cache_root

TOKENIZER_DIR = asset("tokenizer")
PREFIX = "builtin:"

# Llama-shaped configs (transformers LlamaConfig fields). vocab_size is filled from the shipped tokenizer.
CONFIGS: dict[str, dict] = {
    "tiny-llama": dict(
        hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=False,
    ),
    "small-llama": dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
        max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=False,
    ),
}


def is_builtin(path: str) -> bool:
    return path.startswith(PREFIX)


def builtin_name(path: str, field: str = "model.path") -> str:
    name = path[len(PREFIX) :]
    if name not in CONFIGS:
        raise UserError(f"{field}: unknown builtin model `{path}`; available: "
                        f"{', '.join(PREFIX + n for n in CONFIGS)}.{did_you_mean(name, CONFIGS, prefix=PREFIX)}")
    return name


def materialize(path: str, init_seed: int) -> Path:
    """Write the builtin model (config + seeded random weights + tokenizer) to the cache once; return its dir."""
    name = builtin_name(path)
    out = cache_root() / "builtin" / f"{name}-seed{init_seed}"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    cfg = LlamaConfig(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        **CONFIGS[name],
    )
    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        model = LlamaForCausalLM(cfg)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(out)  # atomic: concurrent processes never see a half-written model
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return out
