"""`lora` and `qlora`: peft LoRA adapters on a frozen base (QLoRA: the base quantized by bitsandbytes).

Every LoraConfig option is accepted by its peft name; `alpha`/`dropout` are tunekit's names for
`lora_alpha`/`lora_dropout`. Sub-configs (loftq_config, eva_config, corda_config, lora_ga_config, kasa_config ...)
are given as mappings and turned into peft's config classes here. LoRA+ replaces the Trainer's optimizer with
`peft.optimizers.create_loraplus_optimizer`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import UserError
from tunekit.launch.runtime import is_main_process
from tunekit.methods.peft_schema import snapshot, subconfig_class
from tunekit.methods.plan import MethodPlan
from tunekit.model.load import torch_dtype

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

NOT_PEFT = {"name", "alpha", "dropout", "loraplus_lr_ratio", "loraplus_lr_embedding", "bits", "quant_type",
            "double_quant", "compute_dtype", "quant_storage", "calibration_batches"}


def peft_kwargs(cfg: Any, tuner: str) -> dict:
    """The options a recipe set, as keyword arguments for peft's config class (sub-configs built).

    A null or empty mapping that is the snapshot's default is left to peft: a run's recipe.resolved.yaml writes
    every option, and there `runtime_config: null` stands for the LoraRuntimeConfig() peft builds itself (the
    snapshot records a sub-config default as null) and `loftq_config: {}` for no LoftQ config."""
    import peft

    options = snapshot()["tuners"][tuner]["options"]
    out = {}
    for key in cfg.model_fields_set - NOT_PEFT:
        value = getattr(cfg, key)
        if key in options and value in (None, {}) and value == options[key]["default"]:
            continue
        sub = subconfig_class(options[key]["type"]) if key in options else None
        if isinstance(value, dict) and sub and hasattr(peft, sub):
            value = getattr(peft, sub)(**value)
        out[key] = value
    return out


def peft_config(cfg: Any) -> Any:
    from peft import LoraConfig, TaskType
    from peft.tuners.lora.config import CordaConfig, EvaConfig, LoraGAConfig

    kw = dict(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
              bias=cfg.bias, modules_to_save=cfg.modules_to_save or None, init_lora_weights=cfg.init_lora_weights)
    kw.update(peft_kwargs(cfg, "lora"))
    kw["modules_to_save"] = kw["modules_to_save"] or None
    if cfg.init_lora_weights == "eva" and kw.get("eva_config") is None:
        kw["eva_config"] = EvaConfig()
    if cfg.init_lora_weights == "corda" and kw.get("corda_config") is None:
        kw["corda_config"] = CordaConfig()
    if cfg.init_lora_weights == "lora_ga" and kw.get("lora_ga_config") is None:
        kw["lora_ga_config"] = LoraGAConfig()
    try:
        return LoraConfig(task_type=TaskType.CAUSAL_LM, **kw)
    except (ValueError, TypeError) as e:
        raise UserError(f"method: peft rejected the LoRA options: {e}") from None


def quantization_kwargs(recipe: Recipe) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    m = recipe.method
    if m.bits == 8:
        q = BitsAndBytesConfig(load_in_8bit=True)
    else:
        compute = torch_dtype(recipe.model.dtype if m.compute_dtype == "auto" else m.compute_dtype)
        storage = torch_dtype(recipe.model.dtype if m.quant_storage == "auto" else m.quant_storage or "uint8")
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=m.quant_type,
                               bnb_4bit_use_double_quant=m.double_quant, bnb_4bit_compute_dtype=compute,
                               bnb_4bit_quant_storage=storage)
    return {"quantization_config": q, "device_map": {"": torch.cuda.current_device() if torch.cuda.is_available()
                                                     else "cpu"}}


def quantized_weight_ids(model: Any) -> set[int]:
    """ids of the weights bitsandbytes quantizes when the model loads with a quantization config: every
    `nn.Linear` weight except the output embedding (transformers keeps it in full precision)."""
    from torch import nn

    head = model.get_output_embeddings()
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and m is not head}


CALIBRATED = ("eva", "corda", "lora_ga")  # inits that read training batches (_eva, _corda, _lora_ga)
EVA_MAX_PASSES = 50  # EVA repeats the calibration batches until its SVD converges; give up after this many passes


def build(model: Any, cfg: Any, recipe: Recipe, calibration: list[dict] | None = None) -> Any:
    """`calibration`: a few collated training batches (dicts of tensors), read by the eva, corda, lora_ga inits."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    init = cfg.init_lora_weights
    if init in CALIBRATED and not calibration:
        raise UserError(f"method.init_lora_weights: `{init}` needs calibration batches of training data "
                        "(apply_method(model, recipe, calibration=...); `tunekit train` passes them)")
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.trainer.gradient_checkpointing)
    try:
        config = peft_config(cfg)
        if init == "corda":
            _corda(model, config, calibration or [])
        if init == "lora_ga":
            _lora_ga(model, config, calibration or [])
        model = get_peft_model(model, config)
        if init == "eva":
            _eva(model, calibration or [])
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise UserError(f"method ({cfg.name}, init_lora_weights={init}): {e}") from None
    except ImportError as e:  # e.g. LoftQ needs scipy, CorDA attrs
        hint = " (peft's CorDA imports the `attrs` package: pip install attrs)" if e.name == "attr" else ""
        raise UserError(f"method.init_lora_weights ({init}): {e}{hint}") from None
    configure = _loraplus(cfg, recipe) if cfg.loraplus_lr_ratio else None
    save = _portable_save(model, recipe) if str(init).lower().startswith(MUTATES_BASE) else None
    return MethodPlan(model=model, configure_trainer=configure, save=save)


# Initialisations that move the principal part of each adapted weight into the adapter (the base keeps the
# residual). Their trained adapter only fits that residual base, so final/ gets peft's conversion to a plain
# LoRA (rank 2r) that applies to the original base: what `load_trained`, eval, merge and the ReFT RL stage load.
MUTATES_BASE = ("pissa", "olora", "corda", "lora_ga")
INITIAL_ADAPTER = "initial_adapter"


def _portable_save(model: Any, recipe: Recipe) -> Any:
    initial = Path(recipe.output.dir) / INITIAL_ADAPTER
    if is_main_process():
        config = model.peft_config["default"]
        init, config.init_lora_weights = config.init_lora_weights, True  # as peft requires for the initial copy
        try:
            model.save_pretrained(str(initial))
        finally:
            config.init_lora_weights = init

    def save(trained: Any, final: Path) -> None:
        trained.save_pretrained(str(final), path_initial_model_for_weight_conversion=str(initial))

    return save


def calibration_batches(recipe: Recipe, train_ds: Any, tokenizer: Any, batches: int, field: str) -> list[dict]:
    """The first `batches` batches of training rows (fewer if the data is shorter), collated as the SFT trainer
    does (right-padded, labels -100 on padding). Packed rows are read as one sequence each: the statistics eva /
    corda take are of layer inputs. `field`: the method option that asked for them (for the error)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if len(train_ds) == 0 or "input_ids" not in train_ds[0]:
        raise UserError(f"method.{field}: `{getattr(recipe.method, field)}` trains or calibrates on tokenized "
                        f"training rows, which trainer.kind `{recipe.trainer.kind}` does not build; turn it off")
    size = recipe.trainer.per_device_batch_size
    n = min(len(train_ds), batches * size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = DataCollatorForLanguageModeling(pad_token_id=pad)
    rows = [{"input_ids": r["input_ids"], "labels": r.get("labels", r["input_ids"])} for r in train_ds.select(range(n))]
    return [collate(rows[i : i + size]) for i in range(0, n, size)]


def _on(model: Any, batch: dict) -> dict:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _corda(model: Any, config: Any, calibration: list[dict]) -> None:
    """CorDA: covariance of each target layer's inputs over the batches, then peft builds the adapters from it."""
    from peft.tuners.lora.corda import preprocess_corda
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    _maybe_include_all_linear_layers(config, model)  # CorDA matches target_modules before get_peft_model expands it

    def run_model() -> None:
        training = model.training
        model.eval()
        for batch in calibration:  # peft's covariance hook reads one sequence at a time
            for i in range(batch["input_ids"].shape[0]):
                n = int(batch["attention_mask"][i].sum())
                model(**_on(model, {"input_ids": batch["input_ids"][i:i + 1, :n]}))
        model.train(training)

    preprocess_corda(model, config, run_model=run_model)


def _lora_ga(model: Any, config: Any, calibration: list[dict]) -> None:
    """LoRA-GA: the full fine-tuning gradient of each target weight, averaged over the batches; get_peft_model
    then sets A and B from its SVD so the first steps follow full fine-tuning, and takes B·A out of the base."""
    from peft.tuners.lora.loraga import preprocess_loraga
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    _maybe_include_all_linear_layers(config, model)  # preprocess_loraga matches target_modules before get_peft_model

    def train_step() -> None:  # peft enables gradients on the target weights only and averages over the calls
        for batch in calibration:
            model(**_on(model, batch)).loss.backward()

    with warnings.catch_warnings():  # peft counts calls with full backward hooks; the inputs need no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        preprocess_loraga(model, config, train_step=train_step)


def _eva(peft_model: Any, calibration: list[dict]) -> None:
    """EVA: incremental SVD of each target layer's inputs (label-masked tokens), repeated until it converges."""
    from peft.tuners.lora.eva import initialize_lora_eva_weights

    limit = EVA_MAX_PASSES * len(calibration)
    calls = [0]

    def forward(model: Any, batch: dict) -> Any:
        calls[0] += 1
        if calls[0] > limit:
            raise UserError(f"method.init_lora_weights: eva's SVD did not converge in {EVA_MAX_PASSES} passes over "
                            f"{len(calibration)} calibration batches (each layer needs at least r * rho trained tokens "
                            "per batch); raise method.calibration_batches or trainer.per_device_batch_size, lower "
                            "eva_config.tau, or set eva_config.use_label_mask: false")
        return model(**_on(model, batch))

    # Every process reads the same batches (so computes the same init): nothing to gather across processes.
    with contextlib.redirect_stdout(io.StringIO()):  # peft prints a line per layer and batch it skips
        initialize_lora_eva_weights(peft_model, dataloader=calibration, forward_fn=forward,
                                    show_progress_bar=False, gather_distributed_inputs=False)


def _loraplus(cfg: Any, recipe: Recipe) -> Any:
    def configure(trainer: Any) -> None:
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer

        optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
        extra = {"loraplus_lr_embedding": cfg.loraplus_lr_embedding} if cfg.loraplus_lr_embedding else {}
        trainer.optimizer = create_loraplus_optimizer(
            model=trainer.model, optimizer_cls=optim_cls, loraplus_lr_ratio=cfg.loraplus_lr_ratio,
            weight_decay=recipe.trainer.weight_decay, **optim_kwargs, **extra)

    return configure
