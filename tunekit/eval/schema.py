"""The recipe's `eval:` section: which tasks to run after training and how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunekit.recipe.base import PathStr, Section

METRICS = ("exact_match", "numeric_match", "contains", "regex", "token_f1", "rouge_l", "tool_call_match",
           "tool_call_name", "tool_call_format")


class TaskData(Section):
    path: PathStr = Field(description="A local JSONL file or `builtin:NAME/FILE` for data shipped with tunekit.")
    format: Literal["messages", "prompt_completion", "qa", "choice"] = Field(
        default="qa",
        description="Row layout. `messages` / `prompt_completion`: as in `data:` (the last assistant turn is the "
        "answer). `qa`: {prompt, answer}. `choice`: {prompt, choices: [..], answer: index or choice text}.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Rename columns to the names the format expects, e.g. {prompt: question}."
    )
    tools: PathStr | None = Field(
        default=None, description="`messages` format: a JSON or YAML file of tool schemas for rows without a `tools` "
        "column, as in `data:`.",
    )


class GenerationSettings(Section):
    max_new_tokens: int = Field(default=32, ge=1, description="Tokens generated per answer at most.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy decoding; > 0 samples.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (used when sampling).")
    num_samples: int = Field(
        default=1, ge=1, description="Samples per prompt (k). With k > 1 the report adds pass@k and majority@k."
    )
    seed: int = Field(default=0, description="Seed for sampling.")

    @model_validator(mode="after")
    def _k_needs_sampling(self) -> GenerationSettings:
        if self.num_samples > 1 and self.temperature == 0.0:
            raise ValueError("num_samples > 1 needs temperature > 0 (greedy decoding gives k identical samples)")
        return self


class EvalTask(Section):
    name: str = Field(description="Task name, shown in the report.")
    kind: Literal["loss", "heldout_loss", "generate", "multiple_choice", "lm_eval"] = Field(
        description="`loss`: loss and perplexity with the training mask. `heldout_loss`: the same on the run's own "
        "eval split as its data stage built it (data.eval, or the data.eval_fraction hold-out of the training rows; "
        "SFT runs; no `data`). `generate`: generate answers and score them. `multiple_choice`: pick the option with "
        "the highest log-likelihood. `lm_eval`: run an lm-evaluation-harness task (needs `pip install lm-eval`)."
    )
    data: TaskData | None = Field(default=None, description="The task's examples (not used by `lm_eval`).")
    metrics: list[Literal[METRICS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["exact_match"], description=f"Metrics for `generate` tasks: {', '.join(METRICS)}."
    )
    regex: str = Field(
        default=r"(?<!\w){answer}(?!\w)",
        description="Pattern for the `regex` metric; `{answer}` is replaced by the escaped reference answer.",
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Decoding settings for `generate` tasks."
    )
    max_examples: int | None = Field(default=None, ge=1, description="Use at most this many examples (first N).")
    lm_eval_task: str | None = Field(default=None, description="lm-evaluation-harness task name (kind `lm_eval`).")

    @model_validator(mode="after")
    def _needs(self) -> EvalTask:
        if self.kind == "lm_eval" and not self.lm_eval_task:
            raise ValueError("kind lm_eval needs `lm_eval_task` (an lm-evaluation-harness task name)")
        if self.kind not in ("lm_eval", "heldout_loss") and self.data is None:
            raise ValueError(f"kind {self.kind} needs `data` (a path and format)")
        if self.kind == "multiple_choice" and self.data is not None and self.data.format != "choice":
            raise ValueError("kind multiple_choice needs data.format: choice")
        return self


class EvalConfig(Section):
    tasks: list[EvalTask] = Field(
        default_factory=list,
        description="Tasks to run. Empty: a `loss` task on `data.eval` (when the recipe has eval data); on "
        "`prompt_answer` eval data (reft) a `generate` task scored by numeric_match.",
    )
    run_after_train: bool = Field(default=False, description="Run the eval at the end of `tunekit train`.")
    compare_base: bool = Field(
        default=True, description="Also evaluate the base model on the same tasks and report the difference."
    )
    batch_size: int = Field(default=8, ge=1, description="Examples per forward pass / generate call.")
    num_examples_shown: int = Field(default=3, ge=0, description="Sample generations shown in report.md per task.")
