"""The `trainer:` section: a union of per-objective models, chosen by `kind`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tunekit.data.schema import NON_SFT_FORMATS
from tunekit.trainers.optim_schema import SCHEDULERS, TRACKERS, OptimSettings
from tunekit.trainers.preference_schema import (
    CPOTrainerConfig,
    DPOTrainerConfig,
    KTOTrainerConfig,
    OnlineDPOTrainerConfig,
    ORPOTrainerConfig,
)
from tunekit.trainers.reft_schema import ReFTTrainerConfig

__all__ = ["SCHEDULERS", "TRACKERS", "OptimSettings", "TrainerConfig"]


class SFTTrainerConfig(OptimSettings):
    kind: Literal["sft"] = Field(description="Supervised fine-tuning (next-token loss on the trained tokens).")
    neftune_alpha: float | None = Field(
        default=None, gt=0, description="NEFTune: add uniform noise of scale alpha / sqrt(L * d) to the input "
        "embeddings in training forward passes only (transformers' `neftune_noise_alpha`; the paper uses 5-15). "
        "null: no noise.")
    kernels: Literal["auto", "liger", "none"] = Field(
        default="auto", description="Fused training kernels. `liger`: Liger's Triton kernels for RMSNorm, SwiGLU and "
        "RoPE (transformers' `use_liger_kernel`; the loss stays TRL's fused LM head) - needs a CUDA GPU and "
        "`pip install 'tunekit[gpu]'` (liger-kernel). `auto`: liger on a CUDA GPU when liger-kernel is installed and "
        "supports the model's architecture, else none. `none`: the model's own modules.")
    mezo_eps: float = Field(
        default=1e-3, gt=0, description="With `optim: mezo`: the perturbation scale ε of MeZO's zeroth-order "
        "gradient estimate (the paper uses 1e-3).")


TrainerConfig = Annotated[
    SFTTrainerConfig | DPOTrainerConfig | KTOTrainerConfig | ORPOTrainerConfig | CPOTrainerConfig | ReFTTrainerConfig
    | OnlineDPOTrainerConfig,
    Field(discriminator="kind"),
]

# Which data formats each non-SFT trainer kind reads (checked when the recipe is validated).
DATA_FORMATS: dict[str, tuple[str, ...]] = {
    "dpo": ("preference",),
    "orpo": ("preference",),
    "cpo": ("preference",),
    "kto": ("unpaired_preference", "preference"),
    "reft": ("prompt_answer",),
    "online_dpo": ("prompt_answer",),
}


def check_packing(kind: str, packing: bool, padding_free: bool) -> None:
    """Raise ValueError when the recipe packs data for a trainer kind that reads it unpacked (it would be ignored)."""
    if kind in DATA_FORMATS and (packing or padding_free):
        name = "data.packing" if packing else "data.padding_free"
        raise ValueError(f"{name}: only trainer.kind sft packs examples; the {kind} trainer reads each example "
                         f"unpacked, so {name} would be ignored. Remove it")


# data options that shape SFT examples (which tokens carry loss, how long rows are cut); the trainers reading
# preference / RL rows score whole answers, so a value other than the schema's default would silently do nothing.
# ReFT's warm-up is SFT and honours `train_on`.
SFT_EXAMPLE_OPTIONS = ("train_on", "multi_turn", "train_reasoning", "length_policy", "drop_untrained")


def check_sft_options(kind: str, data: object) -> None:
    """Raise ValueError when a data option that shapes SFT examples is changed for a trainer kind without them."""
    if kind not in DATA_FORMATS:
        return
    warmup = " (its SFT warm-up reads only train_on)" if kind == "reft" else ""
    fields = type(data).model_fields  # type: ignore[attr-defined]
    for name in SFT_EXAMPLE_OPTIONS:
        if getattr(data, name) != fields[name].default and not (kind == "reft" and name == "train_on"):
            raise ValueError(f"data.{name}: shapes SFT examples (which tokens carry loss, how rows are cut); the "
                             f"{kind} trainer scores each answer after its prompt (cut at data.max_length, counted and "
                             f"warned){warmup}, so `{name}: {getattr(data, name)}` would be ignored. Remove it")


def check_data_formats(kind: str, formats: list[str]) -> None:
    """Raise ValueError when a dataset's format cannot feed this trainer kind."""
    allowed = DATA_FORMATS.get(kind)
    bad = sorted({f for f in formats if (f not in allowed if allowed else f in NON_SFT_FORMATS)})
    if bad:
        reads = " or ".join(allowed) if allowed else "an SFT format (messages, prompt_completion, ...)"
        raise ValueError(f"trainer.kind `{kind}` reads data in format {reads}, but data uses {', '.join(bad)}; "
                         "convert the data or choose the trainer kind that reads it")
