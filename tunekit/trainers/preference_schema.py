"""`trainer:` models for preference objectives: dpo, kto, orpo, cpo (incl. SimPO). Field names follow TRL."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunekit.trainers.optim_schema import OptimSettings
from tunekit.trainers.reft_schema import RewardSpec

# Every loss TRL 1.16's DPOTrainer implements (trl/trainer/dpo_trainer.py, `loss_type == ...` branches).
DPOLoss = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]
F_DIVERGENCES = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]
REF_HELP = (
    "Reference model: null (the default) uses the initial policy itself: for adapter methods (lora, ...) the "
    "model with the adapter as it was before training (a fresh LoRA adapter is a no-op, so this is the base "
    "model), for full training a second copy of the base model. Or a path / hub id of an explicit reference model."
)


SMOOTHED_DPO_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")  # the DPO losses TRL 1.16 applies label_smoothing to


class _RefSettings(OptimSettings):
    ref_model: str | None = Field(default=None, description=REF_HELP)
    precompute_ref_log_probs: bool = Field(
        default=False,
        description="Compute the reference log-probabilities of every example once before training, so no "
        "reference model is kept in memory during training.",
    )


class DPOTrainerConfig(_RefSettings):
    kind: Literal["dpo"] = Field(description="Direct Preference Optimization through TRL's DPOTrainer (paired data).")
    learning_rate: float = Field(default=5.0e-6, gt=0, description="Peak learning rate.")
    beta: float = Field(
        default=0.1, gt=0, description="Strength of the pull towards the reference model (tau for `ipo`)."
    )
    loss_type: DPOLoss | list[DPOLoss] = Field(
        default="sigmoid",
        description="DPO loss, or a list of losses combined as a weighted sum (e.g. [sigmoid, bco_pair, sft] for MPO).",
    )
    loss_weights: list[float] | None = Field(
        default=None, description="Weights for a list of loss types (same length); null weighs each by 1."
    )
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=1,
        description="Robust DPO: probability a preference label is flipped (< 0.5). EXO: the epsilon smoothing. "
                    "AOT: label smoothing of its loss. Other loss types do not read it (a non-zero value is an error).",
    )
    f_divergence_type: F_DIVERGENCES = Field(
        default="reverse_kl", description="f-DPO regulariser between policy and reference (reverse_kl is plain DPO)."
    )
    use_weighting: bool = Field(default=False, description="WPO weighting of pairs by their policy probability.")
    ld_alpha: float | None = Field(
        default=None, ge=0, le=1, description="LD-DPO weight of the verbose (longer-than-shared) part; null: off."
    )
    discopop_tau: float = Field(default=0.05, gt=0, description="Temperature of the `discopop` loss.")

    @model_validator(mode="after")
    def _losses(self) -> DPOTrainerConfig:
        losses = self.loss_types
        if self.loss_weights is not None and len(self.loss_weights) != len(losses):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} values for {len(losses)} loss types")
        if "robust" in losses and self.label_smoothing >= 0.5:
            raise ValueError("loss_type `robust` needs label_smoothing < 0.5 (it is a label-flip probability)")
        if "exo_pair" in losses and self.label_smoothing == 0:
            raise ValueError("loss_type `exo_pair` needs label_smoothing > 0 (the paper uses 1e-3)")
        if self.label_smoothing and not set(losses) & set(SMOOTHED_DPO_LOSSES):
            raise ValueError(f"label_smoothing {self.label_smoothing:g} has no effect with loss_type {losses}: TRL "
                             f"reads it only for {', '.join(SMOOTHED_DPO_LOSSES)} (it has no cDPO on the sigmoid "
                             "loss; the nearest is loss_type: robust); remove it or choose one of those")
        return self

    @property
    def loss_types(self) -> list[str]:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


class KTOTrainerConfig(_RefSettings):
    kind: Literal["kto"] = Field(
        description="Kahneman-Tversky Optimization through TRL's KTOTrainer: unpaired good/bad completions "
        "(paired `preference` data is split into one good and one bad example per pair)."
    )
    learning_rate: float = Field(default=5.0e-6, gt=0, description="Peak learning rate.")
    beta: float = Field(default=0.1, gt=0, description="Strength of the pull towards the reference model.")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(default="kto", description="KTO loss variant.")
    desirable_weight: float = Field(default=1.0, gt=0, description="Weight of the desirable examples' loss.")
    undesirable_weight: float = Field(default=1.0, gt=0, description="Weight of the undesirable examples' loss.")


class ORPOTrainerConfig(OptimSettings):
    kind: Literal["orpo"] = Field(
        description="Odds-Ratio Preference Optimization (reference-free; SFT loss plus an odds-ratio term) "
        "through TRL's experimental ORPOTrainer."
    )
    learning_rate: float = Field(default=8.0e-6, gt=0, description="Peak learning rate.")
    beta: float = Field(default=0.1, gt=0, description="Weight of the odds-ratio term (lambda in the ORPO paper).")


class CPOTrainerConfig(OptimSettings):
    kind: Literal["cpo"] = Field(
        description="Contrastive Preference Optimization and SimPO (reference-free) through TRL's experimental "
        "CPOTrainer. For SimPO set loss_type: simpo (and cpo_alpha: 0 for the paper's pure SimPO)."
    )
    learning_rate: float = Field(default=1.0e-6, gt=0, description="Peak learning rate.")
    loss_type: Literal["sigmoid", "hinge", "ipo", "simpo", "alphapo"] = Field(
        default="sigmoid", description="Preference loss; `simpo` is length-normalised with a target margin."
    )
    beta: float = Field(default=0.1, gt=0, description="Scale of the implicit reward (SimPO uses ~2.0).")
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5, description="Label smoothing of the sigmoid loss.")
    cpo_alpha: float = Field(default=1.0, ge=0, description="Weight of the SFT (behaviour cloning) term on chosen.")
    simpo_gamma: float = Field(default=0.5, description="SimPO target reward margin (loss_type: simpo only).")
    alpha: float = Field(default=0.0, description="AlphaPO reward shape; 0 is the plain log-probability reward.")

    @model_validator(mode="after")
    def _smoothing(self) -> CPOTrainerConfig:
        if self.label_smoothing and self.loss_type in ("hinge", "ipo"):
            raise ValueError(f"label_smoothing has no effect with loss_type `{self.loss_type}` (TRL ignores it); "
                             "remove it, or use loss_type sigmoid or simpo")
        return self


class OnlineDPOTrainerConfig(OptimSettings):
    kind: Literal["online_dpo"] = Field(
        description="Online DPO through TRL's experimental OnlineDPOTrainer: for each prompt `num_generations` "
        "completions are sampled from the current policy and scored by the reward functions (from the ground-truth "
        "answer); the best is preferred to the worst in a DPO update (prompts whose samples all tie: see `ties`). "
        "Data: `prompt_answer` rows {question, answer, solution} (solution is not used).")
    learning_rate: float = Field(default=5.0e-7, gt=0, description="Peak learning rate (TRL's default).")
    ref_model: str | None = Field(default=None, description=REF_HELP)
    beta: float = Field(default=0.1, gt=0, description="Strength of the pull towards the reference model.")
    loss_type: Literal["sigmoid", "ipo"] = Field(default="sigmoid", description="DPO loss on the sampled pairs.")
    rewards: list[RewardSpec] = Field(
        min_length=1, description="Reward functions ranking the two samples (as in ReFT's `rl.rewards`); their "
        "weighted sum decides which is chosen.")
    max_new_tokens: int = Field(default=64, ge=1, description="Maximum tokens per sampled completion.")
    temperature: float = Field(default=0.9, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling: keep the top tokens up to this mass.")
    missing_eos_penalty: float | None = Field(
        default=None, ge=0, description="Subtracted from the reward of a completion that does not end with EOS "
        "(pushes the policy to finish within max_new_tokens); null: no penalty.")
    num_generations: int = Field(
        default=2, ge=2, multiple_of=2, description="Completions sampled per prompt (even); the best and the worst "
        "by reward form the DPO pair (TRL samples 2 and keeps both).")
    ties: Literal["skip", "keep"] = Field(
        default="skip", description="When every sample of a prompt has the same reward: `skip` pairs a sample with "
        "itself (zero gradient: the prompt teaches nothing), `keep` trains on an arbitrary order of two (TRL's "
        "behaviour: noise).")
