"""Engine settings: shipped launcher configs by name, recipe overrides on top, TrainingArguments keywords.

DeepSpeed and FSDP2 are configured through transformers' TrainingArguments (`deepspeed=` dict,
`fsdp=True` + `fsdp_config=`), which hands them to accelerate. Values left as "auto" in a DeepSpeed
config are filled by transformers from the same TrainingArguments tunekit builds from the recipe.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from tunekit.errors import UserError

SUFFIX = {"deepspeed": ".json", "fsdp": ".yaml"}


def config_path(kind: str, name_or_path: str) -> Path:
    """A shipped config by name (`zero2`, `fsdp2`) or a user path; errors list what is shipped."""
    from tunekit.cli import shipped_dir

    p = Path(name_or_path).expanduser()
    if p.suffix in (".json", ".yaml", ".yml") or "/" in name_or_path:
        if not p.is_file():
            raise UserError(f"launch.{kind}.config: file `{name_or_path}` does not exist")
        return p
    d = shipped_dir("configs") / kind
    shipped = d / f"{name_or_path}{SUFFIX[kind]}"
    if not shipped.is_file():
        import difflib

        names = sorted(q.stem for q in d.glob(f"*{SUFFIX[kind]}"))
        guess = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f" Did you mean `{guess[0]}`?" if guess else ""
        raise UserError(f"launch.{kind}.config: no shipped config `{name_or_path}`.{hint} "
                        f"Shipped: {', '.join(names)}; or give a path to your own file.")
    return shipped


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot parse launcher config: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a launcher config must be a mapping")
    return data


def deepspeed_config(s: Any) -> dict:
    """The DeepSpeed config dict: the named file with the recipe's stage/offload settings applied."""
    cfg = copy.deepcopy(_read(config_path("deepspeed", s.config)))
    zero = cfg.setdefault("zero_optimization", {})
    if s.stage is not None:
        zero["stage"] = s.stage
    if s.offload_optimizer is not None:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True} if s.offload_optimizer else {"device": "none"}
    if s.offload_params is not None:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True} if s.offload_params else {"device": "none"}
    offloaded = zero.get("offload_optimizer", {}).get("device", "none") != "none"
    if offloaded and "optimizer" not in cfg:
        # ZeRO-Offload steps on CPU with DeepSpeedCPUAdam, which DeepSpeed builds only from its own config.
        cfg["optimizer"] = {"type": "AdamW", "params": {k: "auto" for k in ("lr", "betas", "eps", "weight_decay")}}
    if zero.get("stage") == 3:
        # Consolidated weights at save time: final/ loads in one process.
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", True)
    return cfg


def fsdp_config(s: Any) -> dict:
    """transformers `fsdp_config` for FSDP2: the named file with the recipe's settings applied."""
    cfg = dict(_read(config_path("fsdp", s.config)))
    cfg["version"] = 2
    if s.sharding is not None:
        cfg["reshard_after_forward"] = s.sharding == "full_shard"
    if s.cpu_offload is not None:
        cfg["cpu_offload"] = s.cpu_offload
    if s.activation_checkpointing is not None:
        cfg["activation_checkpointing"] = s.activation_checkpointing
    if s.auto_wrap is not None:
        cfg["auto_wrap_policy"] = "TRANSFORMER_BASED_WRAP" if s.auto_wrap == "decoder_layer" else "NO_WRAP"
    return cfg


def backend(launch: Any) -> str:
    if launch.backend != "auto":
        return launch.backend
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def training_kwargs(recipe: Any) -> dict:
    """Extra TrainingArguments keywords for the recipe's launch strategy (empty for one plain process)."""
    import torch

    from tunekit.launch import strategy as run_strategy

    launch = recipe.launch
    strategy = run_strategy(recipe)
    if strategy == "single":
        return {}
    kw: dict[str, Any] = {"ddp_timeout": launch.timeout_minutes * 60}
    if strategy in ("ddp", "fsdp"):
        kw["ddp_backend"] = backend(launch)
        # accelerate treats a run as multi-process CPU (gloo) only when told it is on CPU.
        kw["use_cpu"] = not torch.cuda.is_available()
    if strategy == "deepspeed":
        kw["deepspeed"] = deepspeed_config(launch.deepspeed)
        if backend(launch) == "gloo":  # DeepSpeed on CPU: reuse the state launch.init_process_group made
            kw["accelerator_config"] = {"use_configured_state": True}
    elif strategy == "fsdp":
        kw["fsdp"] = True
        kw["fsdp_config"] = fsdp_config(launch.fsdp)
        if backend(launch) == "gloo":
            kw["accelerator_config"] = {"use_configured_state": True}
    return kw
