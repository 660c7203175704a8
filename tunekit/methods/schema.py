"""The `method:` section: a union of per-method models, chosen by `name` (see `tunekit methods`).

Hand-written here: full, freeze, lora (and its named variants: dora, pissa ...), qlora, lisa, hft, galore, loreft, lofit, bottleneck. Every other peft tuner gets a
model generated from peft's own config classes (`peft_schema.py`). No torch or peft import happens here.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, create_model, field_validator, model_validator

from tunekit.methods import peft_schema
from tunekit.recipe.base import Section


class FullMethod(Section):
    """Train every parameter of the model."""

    name: Literal["full"] = Field(description="Train every parameter of the model.")


class FreezeMethod(Section):
    """Train only some parameters (name patterns and/or the last N decoder layers); the rest stay frozen."""

    name: Literal["freeze"] = Field(description="Partial training: only the selected parameters train.")
    trainable_patterns: list[str] = Field(
        default_factory=list, description="Regexes searched in parameter names (e.g. `mlp`, `layers\\.1\\.`); "
        "matching parameters train.")
    last_n_layers: int = Field(default=0, ge=0, description="Also train the last N decoder layers.")
    train_embeddings: bool = Field(default=False, description="Also train the input embeddings.")
    train_head: bool = Field(default=False, description="Also train the output head (lm_head).")

    @model_validator(mode="after")
    def _something_trains(self) -> FreezeMethod:
        if not (self.trainable_patterns or self.last_n_layers or self.train_embeddings or self.train_head):
            raise ValueError("freeze trains nothing: set trainable_patterns, last_n_layers, train_embeddings "
                             "or train_head")
        return self


_LORA_CURATED = {"r", "lora_alpha", "lora_dropout", "target_modules", "bias", "modules_to_save",
                 "init_lora_weights"}
LORA_INITS = ("gaussian", "eva", "olora", "pissa", "corda", "lora_ga", "loftq", "orthogonal", "mica")


class _LoraBase(Section):
    """LoRA adapters through peft on a frozen base; every other LoraConfig option is accepted by its peft name."""

    name: Literal["lora"] = Field(description="LoRA adapters through peft; the base weights stay frozen.")
    r: int = Field(default=16, ge=1, description="Rank of the low-rank update.")
    alpha: float = Field(default=32, gt=0, description="Scaling numerator (peft `lora_alpha`): the update is "
                         "scaled by alpha / r (alpha / sqrt(r) with use_rslora).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input (peft `lora_dropout`).")
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="Modules to adapt: `all-linear`, a list of module-name suffixes (e.g. [q_proj, v_proj]), "
        "or a regex string matched against full module names.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases to train.")
    modules_to_save: list[str] = Field(
        default_factory=list, description="Extra modules trained in full and saved with the adapter (e.g. lm_head)."
    )
    init_lora_weights: bool | str = Field(
        default=True, description="Initialisation: true (B=0, the reference init), false, or one of "
        f"{', '.join(LORA_INITS)}, pissa_niter_N. eva and corda (layer inputs) and lora_ga (full fine-tuning "
        "gradients) run over calibration_batches batches of the training data first (see docs/methods.md).")
    calibration_batches: int = Field(
        default=4, ge=1, description="eva / corda / lora_ga inits: how many training batches (per_device_batch_size rows "
        "each, from the start of the training data) the calibration pass reads.")
    loraplus_lr_ratio: float | None = Field(
        default=None, gt=0, description="LoRA+: the B matrices learn this many times faster than A "
        "(peft.optimizers.create_loraplus_optimizer; the paper suggests 16). null: plain LoRA.")
    loraplus_lr_embedding: float | None = Field(
        default=None, gt=0, description="LoRA+: learning rate of LoRA embedding layers (default 1e-6).")

    @field_validator("init_lora_weights")
    @classmethod
    def _init(cls, v: bool | str) -> bool | str:
        if isinstance(v, bool) or v in LORA_INITS or (v.startswith("pissa_niter_") and v[12:].isdigit()):
            return v
        raise ValueError(f"unknown LoRA init `{v}`; expected true, false, {', '.join(LORA_INITS)} or pissa_niter_N")


def _lora_model(name: str, base: type[Section]) -> type[Section]:
    model = create_model(name, __base__=base, **peft_schema.option_fields("lora", skip=_LORA_CURATED))
    model.__doc__ = base.__doc__
    return model


LoraMethod = _lora_model("LoraMethod", _LoraBase)


# LoRA variants users know by their paper's name (PEFT papers, LLaMA-Factory's docs): each is `lora` with one
# setting fixed, so `name: dora` is LoRA with use_dora: true and `name: pissa` LoRA with init_lora_weights: pissa.
# They build, save and reload exactly as `lora` does; giving the setting another value is an error.
LORA_VARIANTS: dict[str, tuple[str, object, str]] = {
    "dora": ("use_dora", True, "DoRA: LoRA with weight decomposition (a trained magnitude vector and a low-rank "
             "direction); `lora` with use_dora: true."),
    "pissa": ("init_lora_weights", "pissa", "PiSSA: LoRA initialised from the weights' principal singular vectors "
              "(the base keeps the residual); `lora` with init_lora_weights: pissa (or pissa_niter_N)."),
    "olora": ("init_lora_weights", "olora", "OLoRA: LoRA initialised by a QR decomposition of the weights (the base "
              "keeps the residual); `lora` with init_lora_weights: olora."),
    "eva": ("init_lora_weights", "eva", "EVA: LoRA initialised from the SVD of the layers' inputs on training "
            "batches (ranks redistributed); `lora` with init_lora_weights: eva."),
    "corda": ("init_lora_weights", "corda", "CorDA: LoRA initialised from a context-oriented decomposition of the "
              "weights on training batches; `lora` with init_lora_weights: corda."),
    "lora_ga": ("init_lora_weights", "lora_ga", "LoRA-GA: LoRA initialised to align with full fine-tuning's "
                "gradients on training batches; `lora` with init_lora_weights: lora_ga."),
}


def _variant_holds(name: str, value: object) -> bool:
    field, fixed, _ = LORA_VARIANTS[name]
    return value == fixed or (name == "pissa" and isinstance(value, str) and value.startswith("pissa_niter_"))


class _LoraVariantBase(LoraMethod):  # type: ignore[misc, valid-type]
    @model_validator(mode="after")
    def _fixed_setting(self) -> _LoraVariantBase:
        field, fixed, _ = LORA_VARIANTS[self.name]
        if not _variant_holds(self.name, getattr(self, field)):
            raise ValueError(f"method.name `{self.name}` is LoRA with {field}: {str(fixed).lower()}; remove "
                             f"{field} or use name: lora")
        self.model_fields_set.add(field)  # handed to peft like a setting the recipe wrote
        return self


def _lora_variant(name: str) -> type[Section]:
    field, fixed, doc = LORA_VARIANTS[name]
    kind = bool if isinstance(fixed, bool) else bool | str
    model = create_model(
        "".join(p.capitalize() for p in name.split("_")) + "Method", __base__=_LoraVariantBase,
        name=(Literal[name], Field(description=doc)),  # type: ignore[valid-type]
        **{field: (kind, Field(default=fixed, description=f"Fixed by the name: {fixed} (see `lora`)."))})
    model.__doc__ = doc
    return model


LORA_VARIANT_METHODS = [_lora_variant(name) for name in LORA_VARIANTS]


class _QloraBase(_LoraBase):
    """LoRA on a base model quantized by bitsandbytes (4-bit nf4/fp4 or 8-bit), prepared for k-bit training."""

    name: Literal["qlora"] = Field(description="QLoRA: the base loaded in 4-bit (or 8-bit) by bitsandbytes, then LoRA.")
    bits: Literal[4, 8] = Field(default=4, description="Quantize the base to 4 or 8 bits.")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type (NormalFloat4 or FP4).")
    double_quant: bool = Field(default=True, description="4-bit: also quantize the quantization constants.")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="4-bit: dtype of the matmuls (auto: the model's dtype).")
    quant_storage: Literal["auto", "uint8", "bfloat16", "float16", "float32"] | None = Field(
        default=None, description="4-bit: dtype the packed 4-bit weights are stored in (bitsandbytes "
        "`bnb_4bit_quant_storage`); null keeps bitsandbytes' uint8. ZeRO-3 and FSDP need it equal to the model's "
        "dtype (auto: model.dtype) so quantized and unquantized weights shard together.")

    @model_validator(mode="after")
    def _storage_is_4bit(self) -> _QloraBase:
        if self.bits == 8 and self.quant_storage is not None:
            raise ValueError("quant_storage applies to 4-bit weights only; remove it or set bits: 4")
        return self

    @field_validator("init_lora_weights")
    @classmethod
    def _init_on_quantized(cls, v: bool | str) -> bool | str:
        if v == "lora_ga":
            raise ValueError("lora_ga estimates full-precision gradients of the base weights, which a quantized "
                             "base does not have; use method.name: lora for LoRA-GA, or another init with qlora")
        return v


QloraMethod = _lora_model("QloraMethod", _QloraBase)


class LisaMethod(Section):
    """LISA (layerwise importance sampling): every `interval` steps a random set of `layers` decoder layers trains."""

    name: Literal["lisa"] = Field(description="LISA: sampled decoder layers train, the rest are frozen; "
                                  "embeddings and head always train.")
    layers: int = Field(default=2, ge=1, description="gamma: how many decoder layers train at a time.")
    interval: int = Field(default=20, ge=1, description="K: resample the trainable layers every K optimizer steps.")
    train_embeddings: bool = Field(default=True, description="Keep the input embeddings trainable (the paper does).")
    train_head: bool = Field(default=True, description="Keep the output head trainable (the paper does).")
    seed: int | None = Field(default=None, description="Seed of the layer schedule (default: trainer.seed).")


class HftMethod(Section):
    """HFT (half fine-tuning): a seeded random half of each layer's attention and MLP matrices is frozen."""

    name: Literal["hft"] = Field(description="Half fine-tuning: freeze a seeded random half of the parameter groups.")
    stage: int = Field(default=0, ge=0, description="Stage number: each stage (with the same seed) freezes a "
                       "different random half, so later stages leave earlier ones' frozen weights intact.")
    seed: int | None = Field(default=None, description="Seed of the choice (default: trainer.seed).")
    train_embeddings: bool = Field(default=False, description="Train the input embeddings (frozen in the paper).")
    train_head: bool = Field(default=False, description="Train the output head (frozen in the paper).")
    train_norms: bool = Field(default=True, description="Train the RMSNorm weights (tiny; on in the paper).")


class GaloreMethod(Section):
    """GaLore: full-parameter training with gradients projected to a low rank (transformers' galore optimizers)."""

    name: Literal["galore"] = Field(description="GaLore low-rank gradient projection (needs `pip install tunekit[galore]`).")
    optimizer: Literal["galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
                       "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise"] = Field(
        default="galore_adamw", description="transformers optimizer name (replaces trainer.optim). Layerwise "
        "variants save memory but cannot resume or accumulate gradients.")
    target_modules: list[str] = Field(default_factory=lambda: ["attn", "mlp"], description="Regexes or names of "
                                      "modules whose weight matrices get GaLore (transformers optim_target_modules).")
    rank: int = Field(default=128, ge=1, description="Rank of the gradient projection.")
    update_proj_gap: int = Field(default=200, ge=1, description="Recompute the projection every N steps.")
    scale: float = Field(default=0.25, gt=0, description="Scale of the projected update.")
    proj_type: Literal["std", "reverse_std", "right", "left", "full"] = Field(
        default="std", description="Which side to project.")


class LoreftMethod(Section):
    """LoReFT: h + Rᵀ(Wh + b − Rh) on hidden states at chosen layers/positions; the base stays frozen."""

    name: Literal["loreft"] = Field(description="Low-rank linear subspace representation fine-tuning (LoReFT).")
    rank: int = Field(default=4, ge=1, description="Rank r of the subspace (R has r orthonormal rows).")
    layers: list[int] | Literal["all"] = Field(default="all", description="Decoder layers whose output is "
                                               "intervened on (0-based), or `all`.")
    positions: Literal["all", "first", "last", "first_last"] = Field(
        default="all", description="Token positions intervened on: `all`; `first`: the first `first_n` tokens of each "
        "sequence (the prompt start); `last`: the last `last_n` prompt tokens before each trained span (at "
        "inference: the last `last_n` tokens of the prompt, never the generated ones); `first_last`: both, as the "
        "paper's f+l positions. `last` and `first_last` need trainer.kind sft (the prompt boundary comes from the "
        "labels).")
    first_n: int = Field(default=4, ge=1, description="With positions first / first_last: how many leading tokens.")
    last_n: int = Field(default=4, ge=1, description="With positions last / first_last: how many prompt tokens "
                        "before each trained span.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the intervention's input.")


class LofitMethod(Section):
    """LoFiT: learned offset vectors added to the outputs of selected attention heads; the base stays frozen."""

    name: Literal["lofit"] = Field(description="Localized fine-tuning: per-head offset vectors on chosen heads.")
    heads: list[list[int]] | Literal["all"] = Field(default="all", description="Heads to tune as [layer, head] "
                                                    "pairs (0-based), or `all`; with `select_heads`, the "
                                                    "candidates the selection picks from.")
    select_heads: int | float | None = Field(
        default=None, gt=0, description="Pick the heads automatically, as LoFiT's first step: learn a per-head "
        "scale on every candidate head for `select_steps` batches of the training data, then keep the top K heads "
        "by the L1 norm of their scales (K: this number, or this fraction of the candidates when < 1; the paper "
        "keeps ~3%). The chosen heads and their scores are recorded in final/interventions.json.")
    select_steps: int = Field(default=50, ge=1, description="Batches the head-selection step trains on.")
    select_l1: float = Field(default=0.0, ge=0.0, description="L1 penalty on the scales during head selection "
                             "(sparser scores).")
    scale: bool = Field(default=False, description="Also learn a per-head scale (1 + a) on the chosen heads, as "
                        "in LoFiT's head-selection step.")

    @model_validator(mode="after")
    def _selection(self) -> LofitMethod:
        if isinstance(self.select_heads, float) and self.select_heads >= 1:
            raise ValueError("select_heads: give a whole number of heads, or a fraction below 1")
        return self


class BottleneckMethod(Section):
    """Bottleneck adapters (LLM-Adapters): series or parallel down/up projections on the decoder MLPs; base frozen."""

    name: Literal["bottleneck"] = Field(description="Bottleneck adapters (series or parallel) on each decoder "
                                        "layer's MLP, as in LLM-Adapters; the base stays frozen.")
    placement: Literal["series", "parallel"] = Field(
        default="series", description="`series`: the adapter reads the MLP's output (after the MLP); `parallel`: "
        "it reads the MLP's input (beside the MLP). Either way its output is added to the MLP's output.")
    bottleneck_size: int = Field(default=256, ge=1, description="Width of the bottleneck (LLM-Adapters' default 256).")
    activation: Literal["tanh", "relu", "gelu", "silu"] = Field(
        default="tanh", description="Non-linearity between the projections (LLM-Adapters' default tanh).")
    scaling: float = Field(default=1.0, gt=0, description="Factor on the adapter's output.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    layers: list[int] | Literal["all"] = Field(default="all", description="Decoder layers that get an adapter "
                                               "(0-based), or `all`.")


HANDWRITTEN = [FullMethod, FreezeMethod, LoraMethod, *LORA_VARIANT_METHODS, QloraMethod, LisaMethod, HftMethod,
               GaloreMethod, LoreftMethod, LofitMethod, BottleneckMethod]
PEFT_TUNERS = peft_schema.build_tuner_models()
ALL_METHODS = [*HANDWRITTEN, *PEFT_TUNERS]

MethodConfig = Annotated[Union[tuple(ALL_METHODS)], Field(discriminator="name")]  # noqa: UP007


def method_name(model: type[Section]) -> str:
    return model.model_fields["name"].annotation.__args__[0]  # type: ignore[union-attr]
