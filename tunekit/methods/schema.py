"""The `method:` section: a union of per-method models, chosen by `name`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tunekit.recipe.base import Section


class FullMethod(Section):
    name: Literal["full"] = Field(description="Train every parameter of the model.")


class LoraMethod(Section):
    name: Literal["lora"] = Field(description="LoRA adapters through peft; the base weights stay frozen.")
    r: int = Field(default=16, ge=1, description="Rank of the low-rank update.")
    alpha: float = Field(default=32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="Modules to adapt: `all-linear`, a list of module-name suffixes (e.g. [q_proj, v_proj]), "
        "or a regex string matched against full module names.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases to train.")
    modules_to_save: list[str] = Field(
        default_factory=list, description="Extra modules trained in full and saved with the adapter (e.g. lm_head)."
    )


MethodConfig = Annotated[FullMethod | LoraMethod, Field(discriminator="name")]
