"""`lora` and `qlora`: peft LoRA adapters on a frozen base (QLoRA: the base quantized by bitsandbytes).

Every LoraConfig option is accepted by its peft name; `alpha`/`dropout` are tunekit's names for
`lora_alpha`/`lora_dropout`. Sub-configs (loftq_config, eva_config, corda_config, lora_ga_config, kasa_config ...)
are given as mappings and turned into peft's config classes here. LoRA+ replaces the Trainer's optimizer with
`peft.optimizers.create_loraplus_optimizer`.
"""

from __future__ import annotations

from typing import Any

from tunekit.errors import UserError

NOT_PEFT = {"name", "alpha", "dropout", "loraplus_lr_ratio", "loraplus_lr_embedding", "bits", "quant_type",
            "double_quant", "compute_dtype"}


def peft_kwargs(cfg: Any, tuner: str) -> dict:
    """The options a recipe set, as keyword arguments for peft's config class (sub-configs built)."""
    import peft

    from tunekit.methods.peft_schema import snapshot, subconfig_class

    options = snapshot()["tuners"][tuner]["options"]
    out = {}
    for key in cfg.model_fields_set - NOT_PEFT:
        value = getattr(cfg, key)
        sub = subconfig_class(options[key]["type"]) if key in options else None
        if isinstance(value, dict) and sub and hasattr(peft, sub):
            value = getattr(peft, sub)(**value)
        out[key] = value
    return out


def peft_config(cfg: Any) -> Any:
    from peft import LoraConfig, TaskType

    kw = dict(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
              bias=cfg.bias, modules_to_save=cfg.modules_to_save or None, init_lora_weights=cfg.init_lora_weights)
    kw.update(peft_kwargs(cfg, "lora"))
    kw["modules_to_save"] = kw["modules_to_save"] or None
    try:
        return LoraConfig(task_type=TaskType.CAUSAL_LM, **kw)
    except (ValueError, TypeError) as e:
        raise UserError(f"method: peft rejected the LoRA options: {e}") from None


def quantization_kwargs(recipe: Any) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    from tunekit.model.load import torch_dtype

    m = recipe.method
    if m.bits == 8:
        q = BitsAndBytesConfig(load_in_8bit=True)
    else:
        compute = torch_dtype(recipe.model.dtype if m.compute_dtype == "auto" else m.compute_dtype)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=m.quant_type,
                               bnb_4bit_use_double_quant=m.double_quant, bnb_4bit_compute_dtype=compute)
    return {"quantization_config": q, "device_map": {"": torch.cuda.current_device() if torch.cuda.is_available()
                                                     else "cpu"}}


def build(model: Any, cfg: Any, recipe: Any) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    from tunekit.methods.registry import MethodPlan

    if cfg.init_lora_weights in ("eva", "corda"):
        raise UserError(f"method.init_lora_weights: `{cfg.init_lora_weights}` needs a calibration pass over "
                        "data, which tunekit does not wire yet; use pissa, olora, gaussian or loftq")
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.trainer.gradient_checkpointing)
    try:
        model = get_peft_model(model, peft_config(cfg))
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"method ({cfg.name}): {e}") from None
    except ImportError as e:  # e.g. LoftQ needs scipy
        raise UserError(f"method.init_lora_weights ({cfg.init_lora_weights}): {e}") from None
    configure = _loraplus(cfg, recipe) if cfg.loraplus_lr_ratio else None
    return MethodPlan(model=model, configure_trainer=configure)


def _loraplus(cfg: Any, recipe: Any) -> Any:
    def configure(trainer: Any) -> None:
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer

        optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
        extra = {"loraplus_lr_embedding": cfg.loraplus_lr_embedding} if cfg.loraplus_lr_embedding else {}
        trainer.optimizer = create_loraplus_optimizer(
            model=trainer.model, optimizer_cls=optim_cls, loraplus_lr_ratio=cfg.loraplus_lr_ratio,
            weight_decay=recipe.trainer.weight_decay, **optim_kwargs, **extra)

    return configure
