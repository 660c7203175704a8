"""`trainer: {kind: reft}`: Reinforced Fine-Tuning = an SFT warm-up stage, then online RL (GRPO, RLOO or PPO)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunekit.recipe.base import Section
from tunekit.trainers.optim_schema import OptimSettings


class _Reward(Section):
    weight: float = Field(default=1.0, description="Weight of this reward in the weighted sum of all rewards.")


class NumericMatchReward(_Reward):
    type: Literal["numeric_match"] = Field(
        description="1 when the completion's answer (the number after the last `####`, else in its last `\\boxed{}` (fractions read), else its last number) "
        "equals the row's answer column within the tolerance, else 0. An answer that is not one number (MATH's `(1, 2)`, `x^2+1`) "
        "is compared as text with the completion's final answer (LaTeX wrappers, spacing and case aside)."
    )
    column: str = Field(default="answer", description="Dataset column holding the ground-truth answer.")
    tolerance: float = Field(default=1e-6, ge=0, description="Absolute tolerance of the comparison.")
    relative_tolerance: float = Field(default=0.0, ge=0, description="Tolerance relative to |answer|.")


class ExactMatchReward(_Reward):
    type: Literal["exact_match"] = Field(
        description="1 when the completion's final answer text (after the last `####`, else in its last `\\boxed{}`, else the whole completion) "
        "equals the answer column, else 0; with ignore_case, `\\text{}`, `$` and spacing aside too."
    )
    column: str = Field(default="answer", description="Dataset column holding the ground-truth answer.")
    ignore_case: bool = Field(default=True, description="Compare case-insensitively.")


class RegexMatchReward(_Reward):
    type: Literal["regex_match"] = Field(
        description="With `column` null: 1 when `pattern` is found in the completion. With `column`: 1 when the "
        "pattern's first group (or whole match) of the last match equals that column's value."
    )
    pattern: str = Field(description="Python regular expression searched in the completion.")
    column: str | None = Field(default=None, description="Column the captured text must equal; null: any match.")

    @model_validator(mode="after")
    def _compiles(self) -> RegexMatchReward:
        import re

        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression: {e}") from None
        return self


class FormatReward(_Reward):
    type: Literal["format"] = Field(
        description="1 when the whole completion matches `pattern` (default: reasoning ending in `#### <number>`)."
    )
    pattern: str = Field(
        default=r"(?s).*####\s*-?[\d,]*\.?\d+\s*", description="Regular expression the full completion must match."
    )


class PythonReward(_Reward):
    type: Literal["python"] = Field(
        description="Your own function `def NAME(completions, **kwargs) -> list[float | None]`: completions are "
        "strings, kwargs hold `prompts` (question strings) and each dataset column as a list."
    )
    file: str = Field(description="Python file defining the function (relative paths resolve against the cwd).")
    function: str = Field(description="Name of the function in `file`.")

    @model_validator(mode="after")
    def _signature(self) -> PythonReward:
        check_reward_signature(Path(self.file), self.function)
        return self


RewardSpec = Annotated[
    NumericMatchReward | ExactMatchReward | RegexMatchReward | FormatReward | PythonReward, Field(discriminator="type")
]


def check_reward_signature(path: Path, name: str) -> None:
    """Read (never run) the user's file and check `name` is `def name(completions, ..., **kwargs)`."""
    if not path.is_file():
        raise ValueError(f"reward file `{path}` not found (relative paths resolve against {Path.cwd()})")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8-sig"), filename=str(path))
    except SyntaxError as e:
        raise ValueError(f"reward file `{path}` line {e.lineno}: syntax error: {e.msg}") from None
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    fn = defs.get(name)
    if fn is None:
        found = ", ".join(sorted(defs)) or "none"
        raise ValueError(f"reward file `{path}` defines no top-level function `{name}` (functions found: {found})")
    if isinstance(fn, ast.AsyncFunctionDef):
        raise ValueError(f"`{name}` in `{path}` is async; write a plain `def`")
    a = fn.args
    names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
    if "completions" not in names or a.kwarg is None:
        raise ValueError(f"`{name}` in `{path}` (line {fn.lineno}) must accept `completions` and `**kwargs`, e.g. "
                         f"`def {name}(completions, answer, **kwargs)`; it is called with keyword arguments")


class WarmupStage(OptimSettings):
    """SFT warm-up on question -> reasoning path (the `solution` column)."""

    learning_rate: float = Field(default=2.0e-4, gt=0, description="Peak learning rate of the warm-up.")


class PPOSettings(Section):
    """PPO's own settings (`trainer.rl.algorithm: ppo`); defaults are those of the ReFT paper's code, but vf_coef."""

    epochs: int = Field(
        default=2, ge=1, description="PPO epochs: optimisation passes over each rollout batch (the ReFT code: 2; TRL's "
        "old PPOTrainer: 4).")
    num_mini_batches: int = Field(
        default=1, ge=1, description="Minibatches per pass, each one optimizer step: a rollout batch holds "
        "per_device_batch_size x gradient_accumulation_steps x num_mini_batches completions (ReFT code, TRL: 1).")
    gamma: float = Field(default=1.0, ge=0, le=1, description="Discount factor of GAE (ReFT code, TRL: 1.0).")
    lam: float = Field(default=0.95, ge=0, le=1, description="Lambda of GAE (ReFT code, TRL: 0.95).")
    vf_coef: float = Field(
        default=0.1, ge=0, description="Weight of the value loss in the total loss (TRL's old PPOTrainer: 0.1; the "
        "ReFT code: 5, which drowned the policy gradient in the shared body of the tiny test model).")
    cliprange_value: float = Field(
        default=0.2, gt=0, description="Clipping range of the new value prediction around the rollout's (ReFT "
        "code, TRL: 0.2).")
    whiten_advantages: bool = Field(
        default=True, description="Normalise the advantages to mean 0, std 1 over the rollout batch (ReFT code, TRL).")


class RLStage(OptimSettings):
    """Online RL on the same questions: sample several reasoning paths, score them against the answer."""

    learning_rate: float = Field(default=1.0e-5, gt=0, description="Peak learning rate of the RL stage.")
    algorithm: Literal["grpo", "rloo", "ppo"] = Field(
        default="grpo", description="`grpo` or `rloo`: critic-free (TRL's GRPOTrainer, RLOOTrainer); `ppo`: PPO "
        "with a value head, as in the ReFT paper (tunekit's own trainer; settings in `ppo`).")
    rewards: list[RewardSpec] = Field(
        min_length=1, description="Reward functions; the training reward is their weighted sum."
    )
    num_generations: int = Field(
        default=8, ge=1, description="Reasoning paths sampled per question (grpo/rloo: at least 2).")
    max_completion_length: int = Field(default=256, ge=1, description="Maximum tokens per sampled completion.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling: keep the top tokens up to this mass.")
    top_k: int = Field(default=0, ge=0, description="Keep only the k most likely tokens (0: no limit).")
    beta: float = Field(
        default=0.05, ge=0, description="KL coefficient towards the warm-up model (0: no reference model is kept). "
        "ppo: a per-token penalty in the reward, as in the paper."
    )
    epsilon: float = Field(default=0.2, gt=0, description="Clipping range of the policy ratio.")
    num_iterations: int = Field(
        default=1, ge=1, description="grpo/rloo: optimisation passes over each batch of samples (ppo: `ppo.epochs`)."
    )
    use_vllm: bool = Field(
        default=False, description="grpo/rloo: generate with vLLM (needs vllm installed and a GPU); otherwise plain "
        "generate()."
    )
    eval_samples: int = Field(
        default=4, ge=1, description="Completions sampled per held-out question to measure the mean held-out reward."
    )
    ppo: PPOSettings | None = Field(
        default=None, description="algorithm ppo only: PPO's settings (filled with their defaults when omitted)."
    )

    @model_validator(mode="before")
    @classmethod
    def _ppo_defaults(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("algorithm") == "ppo" and data.get("ppo") is None:
            return {**data, "ppo": {}}
        return data

    @model_validator(mode="after")
    def _algorithm_fields(self) -> RLStage:
        if self.algorithm != "ppo":
            if self.ppo is not None:
                raise ValueError(f"ppo: PPO's settings apply to algorithm ppo only (this is {self.algorithm}); "
                                 "remove them or set algorithm: ppo")
            if self.num_generations < 2:
                raise ValueError(f"num_generations: {self.algorithm} compares samples of the same question, so it "
                                 f"needs at least 2 (got {self.num_generations})")
            return self
        if self.num_iterations != 1:
            raise ValueError("num_iterations: grpo/rloo only; for ppo set ppo.epochs (passes over each rollout)")
        if self.use_vllm:
            raise ValueError("use_vllm: grpo/rloo only; the ppo trainer samples with generate()")
        return self

    @model_validator(mode="after")
    def _batch(self) -> RLStage:
        per_step = self.per_device_batch_size * self.gradient_accumulation_steps
        if self.algorithm == "ppo":
            rollout = per_step * (self.ppo.num_mini_batches if self.ppo else 1)
            if rollout % self.num_generations:
                raise ValueError(f"per_device_batch_size x gradient_accumulation_steps x ppo.num_mini_batches "
                                 f"({rollout}) counts the completions of a rollout and must be a multiple of "
                                 f"num_generations ({self.num_generations})")
        elif per_step % self.num_generations:
            raise ValueError(f"per_device_batch_size x gradient_accumulation_steps ({per_step}) counts completions "
                             f"and must be a multiple of num_generations ({self.num_generations})")
        return self


class ReFTTrainerConfig(Section):
    kind: Literal["reft"] = Field(
        description="Reinforced Fine-Tuning (ReFT paper): SFT warm-up on reasoning paths, then online RL on the "
        "same questions with answer-derived rewards. Data: `prompt_answer` rows {question, answer, solution}."
    )
    warmup: WarmupStage = Field(description="Stage 1: supervised warm-up on question -> solution.")
    rl: RLStage = Field(description="Stage 2: online RL starting from the warm-up's final weights.")

    @property
    def seed(self) -> int:
        return self.warmup.seed

    @property
    def eval_steps(self) -> int | None:
        return self.warmup.eval_steps or self.rl.eval_steps
