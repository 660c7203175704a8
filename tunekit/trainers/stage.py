"""What a trainer kind hands the pipeline: its stages. Most kinds train in one stage; ReFT in two (SFT warm-up,
then online RL). `pipeline.train` runs every stage through the same steps (model + method, trainer, resume,
train, save), so a new kind only says how to build its model and its trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunekit.methods.plan import MethodPlan
    from tunekit.recipe.schema import Recipe
    from tunekit.run_dir import ResumeRecord


@dataclass
class RunInputs:
    """What every stage starts from: the run's recipe, directory, base model path, tokenizer and datasets."""

    recipe: Recipe
    out: Path
    model_path: str
    tokenizer: Any
    train_ds: Any
    eval_ds: Any
    resume: bool
    header: ResumeRecord | None = None  # under --resume (rank 0): the run dir's record of it, written once loaded


# build_trainer(plan, checkpoint_dir, callbacks) -> a ready transformers/TRL Trainer
TrainerFactory = Callable[["MethodPlan", str, list], Any]


@dataclass
class Stage:
    name: str  # "train" for one-stage kinds; "warmup", "rl" for reft (metrics rows are tagged with it)
    dir: Path  # holds checkpoints/ and final/: the run dir itself, or RUN/stages/NAME
    recipe: Recipe  # the recipe as this stage sees it (its own `trainer:` settings)
    seed: int
    build_model: Callable[[], MethodPlan]
    build_trainer: TrainerFactory
    train_ds: Any = None  # the stage's training rows (DPO/KTO drops are counted against them)
    before_save: Callable[[Any], None] | None = None  # e.g. drop TRL's frozen reference adapter
    record: Callable[[Any, dict], dict] | None = None  # extra facts for the stage's record (held-out reward)
    tags: dict = field(default_factory=dict)  # added to every metrics row of the stage
    title: str = ""  # how messages name the stage ("warm-up"); default: its name

    def __post_init__(self) -> None:
        self.title = self.title or self.name


@dataclass
class StagedRun:
    """A kind's stages plus what its summary adds (e.g. reft's algorithm); the last stage's final/ is the run's."""

    stages: list[Stage]
    summary: dict = field(default_factory=dict)
