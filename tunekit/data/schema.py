"""The `data:` section of a recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunekit.recipe.base import Section

FORMATS = ("messages", "prompt_completion", "preference", "unpaired_preference", "prompt_answer")


class DatasetSpec(Section):
    path: str = Field(
        description="A local JSONL file (relative paths resolve against the current directory), or "
        "`builtin:NAME/FILE` for data shipped with tunekit."
    )
    format: Literal["messages", "prompt_completion", "preference", "unpaired_preference", "prompt_answer"] = Field(
        description="Row layout. `messages`: {messages: [{role, content}, ...]}. "
        "`prompt_completion`: {prompt: str, completion: str}. "
        "`preference` (dpo/orpo/cpo/kto): {prompt, chosen, rejected}. "
        "`unpaired_preference` (kto): {prompt, completion, label: true|false}. "
        "`prompt_answer` (reft): {question, answer, solution} (solution: a reasoning path ending in `#### answer`)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename columns to the names the format expects, e.g. {prompt: question, completion: answer}.",
    )


class DataConfig(Section):
    train: list[DatasetSpec] = Field(min_length=1, description="Training datasets (at least one).")
    eval: list[DatasetSpec] = Field(default_factory=list, description="Evaluation datasets (optional).")
    eval_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Hold out this fraction of the training rows for evaluation."
    )
    max_length: int = Field(default=1024, ge=8, description="Maximum tokens per example.")
    length_policy: Literal["truncate", "drop"] = Field(
        default="truncate",
        description="What to do with examples longer than `max_length`: `truncate` them or `drop` them "
        "(both are counted and reported).",
    )
    train_on: Literal["assistant", "all"] = Field(
        default="assistant",
        description="Which tokens carry loss: `assistant` (assistant turns / completions, the default) or `all`.",
    )
    drop_invalid_pairs: bool = Field(
        default=False,
        description="Preference data: drop (and count) rows whose chosen equals rejected or that miss a field, "
        "instead of stopping with an error naming the row.",
    )
    shuffle_seed: int | None = Field(
        default=None, description="Seed for shuffling training rows; null uses trainer.seed."
    )

    @model_validator(mode="after")
    def _eval_sources(self) -> DataConfig:
        if self.eval and self.eval_fraction:
            raise ValueError("give either `eval` datasets or `eval_fraction`, not both")
        return self
