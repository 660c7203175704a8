"""Score steps of `data.select` on preference, KTO and ReFT rows: one answer scored given its prompt.

The cache holds these rows as conversations, not as tokenized examples, so the score step builds the example it
scores: the prompt rendered with the generation prompt (untrained) followed by one answer (trained) as the model
writes it after the prompt (`pair_tokens`, as the trainers score it), truncated to `data.max_length` (keeping at
least one answer token). The answer scored is

    preference (dpo, orpo, cpo, online)   the chosen response
    unpaired_preference (kto)             the completion, whatever its label
    prompt_answer (reft, online_dpo)      the solution (what the ReFT warm-up trains on)

and perplexity / IFD are then computed exactly as for SFT examples (`select_score`), under the step's model (the
recipe's by default), once per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunekit.data.pair_tokens import pair_ids, pair_texts, row_tools
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

    texts = pair_texts(render, row["prompt"], scored_answer(row), "data.select", row_tools(row))
    prompt_ids, answer_ids = pair_ids(tokenizer, *texts)
    full, n = prompt_ids + answer_ids, len(prompt_ids)  # the answer as the model writes it after the prompt
    full = full[: max(max_length, n + 1)]
    labels = [-100] * n + full[n:]
    return np.asarray(full, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def row_scorer(fetch: Callable[[Any], list[dict]], render: Any, tokenizer: Any, recipe_model: ModelConfig | None,
               max_length: int) -> Callable[[ScoreStep, Any], tuple[Any, str]]:
    """A `Pool.score` for conversational rows (`fetch`: row indices -> rows): (step, row indices) -> (scores, the
    scoring model's path). Scoring models are loaded once per path and kept for later steps of the same selection."""
    models: dict[str, Any] = {}
    examples: dict[int, tuple[Any, Any]] = {}

    def batch_examples(idx: list[int]) -> list[tuple[Any, Any]]:
        missing = list(dict.fromkeys(i for i in idx if i not in examples))
        for i, row in zip(missing, fetch(missing) if missing else []):
            examples[i] = answer_example(row, render, tokenizer, max_length)
        return [examples[i] for i in idx]

    def score(step: ScoreStep, idx: Any) -> tuple[Any, str]:
        cfg = scoring_model(step, recipe_model, "data.select")
        if cfg.path not in models:
            models[cfg.path] = load_scorer(cfg, tokenizer, "data.select", own_model=step.model is not None)
        lengths = {i: len(ex[0]) for i, ex in zip(idx.tolist(), batch_examples(idx.tolist()))}
        return score_rows(step, models[cfg.path], tokenizer, idx, lengths,
                          lambda batch: batch_examples(batch.tolist()), int,
                          f"select: {step.by} under {cfg.path}"), cfg.path

    return score
