"""Method name -> builder, and the functions the pipeline, `validate --params` and eval/merge call.

A builder takes (model, method config, recipe) and returns a `MethodPlan` (`plan.py`): the model to train plus
what the method needs from the trainer (callbacks, a last change to the Trainer before `train()`, its own save).
`load_kwargs(recipe)` adds what the method needs when the base model loads (QLoRA's quantization).

`load_trained(final_dir)` rebuilds the trained model of any run from its `final/` directory; eval and merge
use it. See docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import UserError
from tunekit.methods import full, galore, interventions, layerwise, lora, peft_generic
from tunekit.methods.plan import MethodPlan
from tunekit.methods.schema import LORA_VARIANTS
from tunekit.model.load import load_config, load_model

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


BUILDERS: dict[str, Callable[..., MethodPlan]] = {
    "full": full.build_full,
    "freeze": full.build_freeze,
    "lora": lora.build,
    "qlora": lora.build,
    "lisa": layerwise.build_lisa,
    "hft": layerwise.build_hft,
    "galore": galore.build,
    "loreft": interventions.build,
    "lofit": interventions.build,
    "bottleneck": interventions.build,  # hooked like the interventions (bottleneck.py)
    **dict.fromkeys(LORA_VARIANTS, lora.build),  # dora, pissa ...: `lora` with one setting fixed (schema.py)
}

# How final/ is reloaded: "full" (a whole model), "peft" (an adapter on the base) or "interventions".
SAVED_AS: dict[str, str] = {"full": "full", "freeze": "full", "lisa": "full", "hft": "full", "galore": "full",
                            "lora": "peft", "qlora": "peft", "loreft": "interventions", "lofit": "interventions",
                            "bottleneck": "interventions", **dict.fromkeys(LORA_VARIANTS, "peft")}
LORA_NAMES = ("lora", "qlora", *LORA_VARIANTS)  # the methods lora.build makes


def builder(name: str) -> Callable[..., MethodPlan]:
    return BUILDERS.get(name, peft_generic.build)


def load_kwargs(recipe: Recipe) -> dict:
    """Extra `from_pretrained` keyword arguments the method needs for the base model."""
    return lora.quantization_kwargs(recipe) if recipe.method.name == "qlora" else {}


def apply_method(model: Any, recipe: Recipe, calibration: list[dict] | None = None) -> MethodPlan:
    """`calibration`: a few collated training batches for data-driven inits (LoRA eva / corda / lora_ga), from
    `calibration_data`."""
    import transformers

    transformers.set_seed(recipe.trainer.seed)  # new weights (adapters, interventions) are a function of the seed
    extra = {"calibration": calibration} if needs_calibration(recipe) else {}
    plan = builder(recipe.method.name)(model, recipe.method, recipe, **extra)
    return plan if isinstance(plan, MethodPlan) else MethodPlan(model=plan)


def build_for_training(recipe: Recipe, model_path: str, train_ds: Any = None, tokenizer: Any = None) -> MethodPlan:
    """The base model loaded as the method needs it (QLoRA's quantization) with the method applied; data-driven
    inits calibrate on the first batches of `train_ds`."""
    calibration = calibration_data(recipe, train_ds, tokenizer)  # None unless the method reads training batches
    return apply_method(load_model(recipe.model, model_path, **load_kwargs(recipe)), recipe, calibration)


def calibration_data(recipe: Recipe, train_ds: Any, tokenizer: Any) -> list[dict] | None:
    """The training batches the method reads when it is built, or None when it reads none."""
    if not needs_calibration(recipe):
        return None
    m = recipe.method
    batches, field = (m.select_steps, "select_heads") if m.name == "lofit" else (m.calibration_batches,
                                                                                  "init_lora_weights")
    return lora.calibration_batches(recipe, train_ds, tokenizer, batches, field)


def needs_calibration(recipe: Recipe) -> bool:
    """Whether the method reads batches of training data when it is built (LoRA / QLoRA eva, corda and lora_ga
    inits; LoFiT's head selection)."""
    m = recipe.method
    return (m.name in LORA_NAMES and m.init_lora_weights in lora.CALIBRATED) or (
        m.name == "lofit" and m.select_heads is not None)


def count_without_weights(recipe: Recipe) -> dict:
    """Parameter counts for the recipe's model and method on the meta device: nothing is loaded or allocated."""
    import torch

    return build_on_meta(recipe, torch.float32)[0].parameters()  # qlora: counts are logical (unquantized)


def build_on_meta(recipe: Recipe, dtype: Any) -> tuple[MethodPlan, set[int]]:
    """The recipe's model (in `dtype`) with the method applied, on the meta device: nothing is allocated. Also
    the ids of the base weights bitsandbytes would quantize under qlora (`lora.quantized_weight_ids`)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    cfg = load_config(recipe.model)
    counted = recipe  # qlora: counts are logical, so the unquantized meta model gives them
    if getattr(recipe.method, "init_lora_weights", True) not in (True, False):
        # data- or SVD-based inits cannot run on meta tensors and do not change the shapes
        counted = recipe.model_copy(update={"method": recipe.method.model_copy(update={"init_lora_weights": True})})
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code)
        quantized = lora.quantized_weight_ids(model)
        try:
            plan = apply_method(model, counted)
        except (UserError, RuntimeError, NotImplementedError) as e:
            raise UserError(f"method `{recipe.method.name}` initialises from the weights' values, so its shapes need "
                            f"the weights: they are in summary.json after a run ({e})") from None
    return plan, quantized


def load_trained(final_dir: str | Path, recipe: Recipe) -> Any:
    """The trained model of a run (`recipe`: its resolved recipe), from RUN/final (adapter, full weights or
    interventions), in eval mode. QLoRA bases are loaded with the same quantization."""
    final_dir = Path(final_dir)
    kind = SAVED_AS.get(recipe.method.name, "peft")
    if kind == "full":
        model = load_model(recipe.model, str(final_dir))
    elif kind == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(recipe.model, **load_kwargs(recipe)), str(final_dir))
    else:
        model = interventions.load(load_model(recipe.model), final_dir)
    return model.eval()
