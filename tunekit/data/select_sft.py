"""`data.select` on tokenized SFT examples: the pool over the encoded split, and the per-dataset accounting.

Runs in `build.prepare` after the shuffle and the eval hold-out, before packing: texts are the examples' rendered
text (decoded token ids), token counts come from the examples, scores from `select_score`. Rows a step removes are
counted in their dataset's `dropped` under the step's reason, and their tokens leave the dataset's totals, so
rows_in + repeated + expanded - dropped = rows_out still holds (checked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunekit.data.arrow_rows import Encoded
from tunekit.data.schema import DataConfig, ScoreStep
from tunekit.data.select import Pool, check_records, reason, select
from tunekit.data.select_score import load_scorer, score_rows, scoring_model
from tunekit.data.stats import DataStats, check_accounting
from tunekit.model.schema import ModelConfig


@dataclass
class Provenance:
    """Per example of an encoded split: its dataset (index into `paths`) and its origin (see DataStats.origins)."""

    owner: Any  # numpy int64
    origin: Any  # numpy int64
    paths: list[str]

    def identity(self, i: int) -> int:
        return int(self.owner[i]) << 48 | int(self.origin[i])


def sft_pool(enc: Encoded, prov: Provenance, tokenizer: Any, recipe_model: ModelConfig | None,
             models: dict[str, Any]) -> Pool:
    """The encoded split as a selection pool; scoring models are loaded into `models` once per path."""

    def texts(idx: Any) -> list[str]:
        (ids,) = enc.gather(idx, ("input_ids",))
        return tokenizer.batch_decode([x.tolist() for x in ids])

    def counts(idx: Any) -> tuple[Any, Any]:
        import numpy as np

        (labels,) = enc.gather(idx, ("labels",))
        return enc.lengths[idx], np.asarray([int((lab != -100).sum()) for lab in labels], dtype=np.int64)

    def fetch(idx: Any) -> list[tuple[Any, Any]]:
        ids, labels = enc.gather(idx)
        return list(zip(ids, labels))

    def score(step: ScoreStep, rows: Any) -> tuple[Any, str]:
        cfg = scoring_model(step, recipe_model, "data.select")
        if cfg.path not in models:
            models[cfg.path] = load_scorer(cfg, tokenizer, "data.select", own_model=step.model is not None)
        return score_rows(step, models[cfg.path], tokenizer, rows, enc.lengths, fetch, prov.identity,
                          f"select: {step.by} under {cfg.path}"), cfg.path

    return Pool(identity=prov.identity, texts=texts, counts=counts, score=score)


def select_examples(cfg: DataConfig, enc: Encoded, prov: Provenance, order: list[int], per: dict[str, DataStats],
                    tokenizer: Any, seed: int, recipe_model: ModelConfig | None) -> tuple[list[int], list[dict]]:
    """The training order after `cfg.select`, and the step records; `per` is updated for the rows removed."""
    models: dict[str, Any] = {}
    try:
        kept, records, removed = select(cfg.select, sft_pool(enc, prov, tokenizer, recipe_model, models), order, seed)
    finally:
        models.clear()
        _free_memory()
    check_records(records, len(order), len(kept))
    uncount(enc, prov, per, [(reason(i, step), rows) for i, (step, rows) in enumerate(zip(cfg.select, removed))])
    check_accounting(per)
    return kept.tolist(), records


def uncount(enc: Encoded, prov: Provenance, per: dict[str, DataStats], removals: list[tuple[str, Any]]) -> None:
    """Count each removed example as dropped (with its step) in its dataset, and take its tokens out."""
    import numpy as np

    alive = np.ones(len(enc), dtype=bool)
    for why, rows in removals:
        if not len(rows):
            continue
        alive[rows] = False
        trained = _trained(enc, rows)
        for d in np.unique(prov.owner[rows]).tolist():
            mine = prov.owner[rows] == d
            st = per[prov.paths[d]]
            st.dropped[why] += int(mine.sum())
            st.rows_out -= int(mine.sum())
            st.tokens -= int(enc.lengths[rows[mine]].sum())
            st.trained_tokens -= int(trained[mine].sum())
    for path, st in per.items():
        ds = [d for d, p in enumerate(prov.paths) if p == path]
        st.lengths = enc.lengths[alive & np.isin(prov.owner, ds)].tolist()


def _trained(enc: Encoded, rows: Any) -> Any:
    import numpy as np

    out = np.zeros(len(rows), dtype=np.int64)
    for start in range(0, len(rows), 1024):
        (labels,) = enc.gather(rows[start : start + 1024], ("labels",))
        out[start : start + len(labels)] = [int((lab != -100).sum()) for lab in labels]
    return out


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
