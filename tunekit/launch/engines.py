"""Engines: shipped launcher configs by name, recipe overrides on top, TrainingArguments keywords; and the
checks and saves of a built trainer (the engine accelerate really set up, consolidated weights).

DeepSpeed and FSDP2 are configured through transformers' TrainingArguments (`deepspeed=` dict,
`fsdp=True` + `fsdp_config=`), which hands them to accelerate. Values left as "auto" in a DeepSpeed
config are filled by transformers from the same TrainingArguments tunekit builds from the recipe.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunekit.errors import UserError, did_you_mean
from tunekit.launch.runtime import backend, run_strategy, strategy
from tunekit.paths import shipped_dir

if TYPE_CHECKING:
    from tunekit.launch.schema import DeepSpeedSettings, FSDPSettings, LaunchConfig

SUFFIX = {"deepspeed": ".json", "fsdp": ".yaml"}


def config_path(kind: str, name_or_path: str) -> Path:
    """A shipped config by name (`zero2`, `fsdp2`) or a user path; errors list what is shipped."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".json", ".yaml", ".yml") or "/" in name_or_path:
        if not p.is_file():
            raise UserError(f"launch.{kind}.config: file `{name_or_path}` does not exist")
        return p
    d = shipped_dir("configs") / kind
    shipped = d / f"{name_or_path}{SUFFIX[kind]}"
    if not shipped.is_file():
        names = sorted(q.stem for q in d.glob(f"*{SUFFIX[kind]}"))
        raise UserError(f"launch.{kind}.config: no shipped config `{name_or_path}`.{did_you_mean(name_or_path, names)} "
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


def deepspeed_config(s: DeepSpeedSettings) -> dict:
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


def fsdp_config(s: FSDPSettings) -> dict:
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


def training_kwargs(launch: LaunchConfig) -> dict:
    """Extra TrainingArguments keywords for the launch strategy (empty for one plain process)."""
    import torch

    kind = strategy(launch)
    if kind == "single":
        return {}
    kw: dict[str, Any] = {"ddp_timeout": launch.timeout_minutes * 60}
    if kind in ("ddp", "fsdp"):
        kw["ddp_backend"] = backend(launch)
        # accelerate treats a run as multi-process CPU (gloo) only when told it is on CPU.
        kw["use_cpu"] = not torch.cuda.is_available()
    if kind == "deepspeed":
        kw["deepspeed"] = deepspeed_config(launch.deepspeed)
        if backend(launch) == "gloo":  # DeepSpeed on CPU: reuse the state runtime.init_process_group made
            kw["accelerator_config"] = {"use_configured_state": True}
    elif kind == "fsdp":
        kw["fsdp"] = True
        kw["fsdp_config"] = fsdp_config(launch.fsdp)
        if backend(launch) == "gloo":
            kw["accelerator_config"] = {"use_configured_state": True}
    return kw


# The accelerate distributed type each strategy must end up as; anything else means the engine was dropped.
ENGINES = {"single": ("NO",), "ddp": ("MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU"),
           "deepspeed": ("DEEPSPEED",), "fsdp": ("FSDP",)}


def engine(trainer: Any) -> str:
    """The engine accelerate actually set up for this trainer (`FSDP`, `DEEPSPEED`, `MULTI_CPU`, `NO`, ...)."""
    return str(trainer.accelerator.distributed_type).split(".")[-1]


def check_engine(launch: LaunchConfig, trainer: Any) -> str:
    """Refuse to train when accelerate set up another engine than the recipe asked for (e.g. FSDP silently
    dropped for plain DDP): a run must never look sharded when it is not. Returns the engine's name."""
    got = engine(trainer)
    want = run_strategy(launch)
    if got not in ENGINES[want]:
        raise UserError(f"launch.strategy {want}: accelerate set up {got} instead of "
                        f"{' or '.join(ENGINES[want])}; refusing to train with another engine than the recipe "
                        "asks for. Run `tunekit train --debug` and report the accelerate/transformers versions.")
    return got


def consolidate_saves(trainer: Any) -> None:
    """Make every Hugging Face save of an FSDP run complete, at checkpoints and at the end.

    FSDP's activation checkpointing wraps each decoder layer in a checkpoint wrapper. The state dict hides the
    wrapper (`_checkpoint_wrapped_module.` is stripped from its keys), but peft picks the adapter's entries by
    module name, where the wrapper is still present: it would match nothing and save an *empty* adapter. So each
    save runs with the wrapped layers put back in their place, and the wrappers restored afterwards for the
    training that follows. Every rank calls save_model (FSDP gathers the shards there)."""
    if getattr(trainer.accelerator.state, "fsdp_plugin", None) is None:
        return
    save_model = trainer.save_model

    def save_without_wrappers(*args: Any, **kwargs: Any) -> None:
        with _activation_checkpoint_wrappers_removed(trainer.model):
            save_model(*args, **kwargs)

    trainer.save_model = save_without_wrappers


def save_consolidated(trainer: Any, path: str) -> None:
    """Save full Hugging Face weights (or the full adapter) that load in one process. Every rank calls this:
    ZeRO-3 and FSDP gather the shards here. An FSDP run whose checkpoints use SHARDED_STATE_DICT (resumable
    with any process count through torch.distributed.checkpoint) still gets consolidated final weights:
    transformers' save_model would otherwise write none for a sharded state dict."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is not None:  # the run's last save: checkpoints are written by now
        plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(path)


@contextlib.contextmanager
def _activation_checkpoint_wrappers_removed(model: Any) -> Iterator[None]:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

    wrappers = [(name, m) for name, m in model.named_modules() if isinstance(m, ActivationWrapper)]
    for name, wrapper in wrappers:
        model.set_submodule(name, wrapper._checkpoint_wrapped_module)
    try:
        yield
    finally:
        for name, wrapper in wrappers:
            model.set_submodule(name, wrapper)
