"""Load the base model and tokenizer with the real `from_pretrained`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunekit import hub
from tunekit.errors import UserError
from tunekit.model import builtin
from tunekit.model.schema import ModelConfig
from tunekit.ui import console


def check_local(path: str | None, field: str = "model.path") -> None:
    """A model path that is a file, or that looks local (`./`, `/`, `~`, several `/`) and does not exist, or an
    unknown `builtin:` name, is a UserError naming `field` (a hub id is not looked up here)."""
    if not path:
        return
    if builtin.is_builtin(path):
        builtin.builtin_name(path, field)  # an unknown builtin name
        return
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{field}: `{path}` is a file; give a model directory or a hub id")
    if (path.startswith((".", "/", "~")) or path.count("/") > 1) and not p.exists():
        raise UserError(f"{field}: local directory `{path}` does not exist")


def resolve_model_path(cfg: ModelConfig, field: str = "model.path") -> str:
    """A local directory or hub id; builtins are materialised to the cache first."""
    if builtin.is_builtin(cfg.path):
        return str(builtin.materialize(cfg.path, cfg.init_seed))
    check_local(cfg.path, field)
    p = Path(cfg.path).expanduser()
    if p.exists():
        return str(p)
    hub.check_model(cfg.path, cfg.revision)
    return cfg.path


def absolute_local(path: str | None) -> str | None:
    """An existing local model directory as an absolute path, so that a run's recipe.resolved.yaml and
    adapter_config.json find it from any directory (eval, merge, chat); a builtin or hub id as it is."""
    if path is None or builtin.is_builtin(path) or not Path(path).expanduser().is_dir():
        return path
    return str(Path(path).expanduser().resolve())


HUB_HINT = ("a hub id needs the network or the model in the local Hugging Face cache (HF_HUB_OFFLINE=1 uses the "
            "cache only); or give a local model directory")


def load_config(cfg: ModelConfig, model_path: str | None = None) -> Any:
    """The model's transformers config (no weights), as `from_pretrained` finds it."""
    from transformers import AutoConfig

    src = model_path or resolve_model_path(cfg)
    try:
        return AutoConfig.from_pretrained(src, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"model.path: could not load the config of `{cfg.path}`: {str(e).splitlines()[0]} "
                        f"({HUB_HINT})") from None


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def attention(cfg: ModelConfig) -> str:
    """The attention kernel a model is loaded with (`model.attn_implementation`; `auto`: see the schema)."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    import importlib.util

    import torch

    if (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
            and torch_dtype(cfg.dtype) in (torch.bfloat16, torch.float16)
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(cfg: ModelConfig, model_path: str | None = None) -> Any:
    from transformers import AutoTokenizer

    src = cfg.tokenizer or model_path or resolve_model_path(cfg)
    if cfg.tokenizer and not Path(cfg.tokenizer).expanduser().exists():
        hub.check_model(cfg.tokenizer, cfg.revision, "model.tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(src, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise UserError(f"model: could not load the tokenizer from `{src}`: {e} ({HUB_HINT})") from None
    except ValueError as e:  # e.g. a local directory without tokenizer files (a model saved without its tokenizer)
        d = Path(src).expanduser()
        if d.is_dir() and not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise UserError(f"model: `{src}` has no tokenizer (it holds: {', '.join(sorted(p.name for p in d.iterdir()))}"
                            "); save the tokenizer beside the weights, or name one with model.tokenizer") from None
        raise UserError(f"model: could not load the tokenizer from `{src}`: {' '.join(str(e).split())}") from None
    if tok.pad_token is None:
        # Padding positions never carry loss (labels are -100 there), so reusing EOS as pad is safe.
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, model_path: str | None = None, **kwargs: Any) -> Any:
    """The model with the recipe's dtype and attention. Under `auto`, an architecture without the chosen kernel
    (Gemma 2 has no sdpa: its logit soft-capping) loads with the next one (flash_attention_2 -> sdpa -> eager), as
    transformers' own default does, and says so."""
    from transformers import AutoModelForCausalLM

    src = model_path or resolve_model_path(cfg)
    first = attention(cfg)
    kernels = [first, *[k for k in ("sdpa", "eager") if k != first]] if cfg.attn_implementation == "auto" else [first]
    for i, kernel in enumerate(kernels):
        try:
            model = AutoModelForCausalLM.from_pretrained(src, revision=cfg.revision, dtype=torch_dtype(cfg.dtype),
                                                         attn_implementation=kernel,
                                                         trust_remote_code=cfg.trust_remote_code, **kwargs)
        except (OSError, ValueError) as e:
            if i + 1 < len(kernels) and "does not support" in str(e) and "attention" in str(e).lower():
                continue
            raise UserError(f"model.path: could not load `{cfg.path}`: {e}") from None
        if i:
            console.print(f"notice: model `{cfg.path}` has no {first} attention kernel; loading it with {kernel} "
                          "attention (model.attn_implementation: auto)")
        return model
    raise AssertionError("unreachable")
