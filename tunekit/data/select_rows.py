"""Score steps of `data.select` on preference, KTO and ReFT rows: one answer scored given its prompt.

These rows reach TRL as conversations, not as tokenized examples, so the score step builds the example it scores:
the prompt rendered with the generation prompt (untrained) followed by one answer (trained), rendered as the
trainers render them, truncated to `data.max_length` (keeping at least one answer token). The answer scored is

    preference (dpo, orpo, cpo, online)   the chosen response
    unpaired_preference (kto)             the completion, whatever its label
    prompt_answer (reft, online_dpo)      the solution (what the ReFT warm-up trains on)

and perplexity / IFD are then computed exactly as for SFT examples (`select_score`), under the step's model (the
recipe's by default), once per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunekit.data.schema import ScoreStep
from tunekit.data.select_score import load_scorer, score_rows, scoring_model
from tunekit.model.schema import ModelConfig


def scored_answer(row: dict) -> list[dict]:
    """The answer a score step scores, as messages (see the module doc)."""
    if "solution" in row:
        return [{"role": "assistant", "content": row["solution"]}]
    return row["chosen"] if "chosen" in row else row["completion"]


def answer_example(row: dict, render: Any, tokenizer: Any, max_length: int) -> tuple[Any, Any]:
    """(input_ids, labels) of the prompt and its scored answer; labels are -100 on the prompt."""
    import numpy as np

    head = tokenizer(render(row["prompt"], add_generation_prompt=True), add_special_tokens=False).input_ids
    full = tokenizer(render([*row["prompt"], *scored_answer(row)]), add_special_tokens=False).input_ids
    n = 0  # the prompt is the rendered conversation's common prefix with the prompt rendered alone
    while n < min(len(head), len(full) - 1) and head[n] == full[n]:
        n += 1
    full = full[: max(max_length, n + 1)]
    labels = [-100] * n + full[n:]
    return np.asarray(full, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def row_scorer(rows: list[dict], render: Any, tokenizer: Any, recipe_model: ModelConfig | None,
               max_length: int) -> Callable[[ScoreStep, Any], tuple[Any, str]]:
    """A `Pool.score` for conversational rows: (step, row indices) -> (scores, the scoring model's path). Scoring
    models are loaded once per path and kept for later steps of the same selection."""
    models: dict[str, Any] = {}
    examples: dict[int, tuple[Any, Any]] = {}

    def example(i: int) -> tuple[Any, Any]:
        if i not in examples:
            examples[i] = answer_example(rows[i], render, tokenizer, max_length)
        return examples[i]

    def score(step: ScoreStep, idx: Any) -> tuple[Any, str]:
        cfg = scoring_model(step, recipe_model, "data.select")
        if cfg.path not in models:
            models[cfg.path] = load_scorer(cfg, tokenizer, "data.select", own_model=step.model is not None)
        lengths = {i: len(example(i)[0]) for i in idx.tolist()}
        return score_rows(step, models[cfg.path], tokenizer, idx, lengths,
                          lambda batch: [example(i) for i in batch.tolist()], int,
                          f"select: {step.by} under {cfg.path}"), cfg.path

    return score
