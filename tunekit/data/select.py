"""`data.select`: the selection steps, applied in order to the training rows of any format.

A `Pool` is the training split as a selection sees it: each row's dataset, its identity (copies made by upsampling
share one), and functions that give rows' rendered texts, token counts and scores. `select` runs the steps over the
rows in training order (after the shuffle and the eval hold-out) and returns the rows kept, in that order, a record
per step for data.json, and the rows each step removed (the caller counts them per dataset, with the step as the
reason, so the row accounting still adds up). Every step is deterministic: dedup keeps the first row in dataset
order, ties in scores keep training order, and the random step is seeded.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from tunekit.data.dedup import ExactDuplicates, NearDuplicates
from tunekit.data.schema import DedupStep, Keep, LengthStep, RandomStep, ScoreStep
from tunekit.errors import UserError

BATCH = 1024  # rows whose texts or token counts are fetched at once


@dataclass
class Pool:
    """Rows are addressed by their index in the split (dataset order)."""

    identity: Callable[[int], Hashable]  # rows with the same identity are copies of one source example
    texts: Callable[[Any], list[str]]  # indices -> rendered texts
    counts: Callable[[Any], tuple[Any, Any]]  # indices -> (tokens, trained tokens), numpy arrays
    # (step, indices) -> (scores, the scoring model's name); None: the data has no scorer
    score: Callable[[ScoreStep, Any], tuple[Any, str]] | None = None


def reason(i: int, step: Any) -> str:
    """The `dropped` reason counting the rows step i removed."""
    detail = {"dedup": f"dedup {getattr(step, 'method', '')}", "score": f"score {getattr(step, 'by', '')}"}
    return f"select[{i}] {detail.get(step.kind, step.kind)}"


def select(steps: Sequence[Any], pool: Pool, order: Any, seed: int) -> tuple[Any, list[dict], list[Any]]:
    """(rows kept in `order`'s order, one record per step, the rows each step removed)."""
    import numpy as np

    rows = np.asarray(order, dtype=np.int64)
    records, removed = [], []
    for i, step in enumerate(steps):
        keep, extra = STEPS[step.kind](step, pool, rows, seed, i)
        records.append({"step": i, "kind": step.kind, "options": step.model_dump(mode="json"),
                        "rows_in": len(rows), "rows_out": int(keep.sum()), "removed": int((~keep).sum()), **extra})
        removed.append(rows[~keep])
        rows = rows[keep]
    return rows, records, removed


def _length(step: LengthStep, pool: Pool, rows: Any, seed: int, i: int) -> tuple[Any, dict]:
    import numpy as np

    keep = np.ones(len(rows), dtype=bool)
    for start in range(0, len(rows), BATCH):
        tokens, trained = pool.counts(rows[start : start + BATCH])
        ok = np.ones(len(tokens), dtype=bool)
        for values, lo, hi in ((tokens, step.min_tokens, step.max_tokens),
                               (trained, step.min_trained_tokens, step.max_trained_tokens)):
            ok &= (values >= lo) if lo is not None else True
            ok &= (values <= hi) if hi is not None else True
        keep[start : start + BATCH] = ok
    return keep, {}


def _dedup(step: DedupStep, pool: Pool, rows: Any, seed: int, i: int) -> tuple[Any, dict]:
    """Rows are visited in dataset order, so the first of each group is kept whatever the shuffle."""
    import numpy as np

    finder = (ExactDuplicates(step.normalize) if step.method == "exact" else
              NearDuplicates(step.threshold, step.num_perm, step.ngram, step.seed, step.normalize))
    visit = np.argsort(rows, kind="stable")
    keep = np.ones(len(rows), dtype=bool)
    for start in range(0, len(visit), BATCH):
        pos = visit[start : start + BATCH]
        for p, text in zip(pos.tolist(), pool.texts(rows[pos])):
            keep[p] = not finder.is_duplicate(pool.identity(int(rows[p])), text)
    return keep, {}


def keep_count(n: int, fraction: float) -> int:
    """Rows a `fraction` keeps of n: rounded half up, at least one (of a non-empty set)."""
    return min(n, max(1, int(fraction * n + 0.5))) if n else 0


def keep_by_score(scores: Any, keep: Keep, order: str, min_score: float | None = None,
                  max_score: float | None = None) -> tuple[Any, float | None]:
    """(mask of the rows kept, the cut: the threshold, or the last kept score). Ties keep the earlier row."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    valid = np.ones(len(scores), dtype=bool)
    valid &= (scores >= min_score) if min_score is not None else True
    valid &= (scores <= max_score) if max_score is not None else True
    mask = np.zeros(len(scores), dtype=bool)
    if keep.threshold is not None:
        mask = valid & ((scores >= keep.threshold) if order == "high" else (scores <= keep.threshold))
        return mask, keep.threshold
    want = keep.top_k if keep.top_k is not None else keep_count(len(scores), keep.fraction or 0.0)
    ranked = np.flatnonzero(valid)
    ranked = ranked[np.argsort(-scores[ranked] if order == "high" else scores[ranked], kind="stable")][:want]
    mask[ranked] = True
    return mask, (float(scores[ranked[-1]]) if len(ranked) else None)


def summary(scores: Any, cut: float | None) -> dict:
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    return {"scores": {"min": _r(s.min()), "median": _r(np.median(s)), "max": _r(s.max()), "mean": _r(s.mean()),
                       "cut": None if cut is None else _r(cut)}} if len(s) else {"scores": None}


def _r(x: float) -> float:
    return float(f"{float(x):.6g}")


def _score(step: ScoreStep, pool: Pool, rows: Any, seed: int, i: int) -> tuple[Any, dict]:
    if pool.score is None:
        raise UserError(f"data.select[{i}]: score steps apply to tokenized SFT examples only")
    scores, model = pool.score(step, rows)
    keep, cut = keep_by_score(scores, step.keep, step.order, step.min_score, step.max_score)
    return keep, {"model": model, **summary(scores, cut)}


def _random(step: RandomStep, pool: Pool, rows: Any, seed: int, i: int) -> tuple[Any, dict]:
    import numpy as np

    draw_seed = seed if step.seed is None else step.seed
    n = len(rows)
    want = min(n, step.count) if step.count is not None else keep_count(n, step.fraction or 0.0)
    keep = np.zeros(n, dtype=bool)
    keep[np.random.default_rng([draw_seed, i]).choice(n, size=want, replace=False)] = True
    return keep, {"seed": draw_seed}


STEPS: dict[str, Callable[..., tuple[Any, dict]]] = {
    "length": _length, "dedup": _dedup, "score": _score, "random": _random,
}


def check_records(records: list[dict], rows_in: int, rows_out: int) -> None:
    """Each step starts with the rows the one before kept; the removals add up to what is gone."""
    expected = rows_in
    for r in records:
        if r["rows_in"] != expected or r["rows_in"] != r["rows_out"] + r["removed"]:
            raise RuntimeError(f"tunekit bug: selection accounting does not add up at step {r['step']}: {r}")
        expected = r["rows_out"]
    if expected != rows_out:
        raise RuntimeError(f"tunekit bug: selection kept {rows_out} rows, its steps say {expected}")


def describe(record: dict) -> str:
    """A step in a few words: `dedup minhash threshold=0.8`, `score ifd (MODEL) keep fraction=0.5, high` ..."""
    o = record["options"]
    if o["kind"] == "length":
        return "length " + " ".join(f"{k}={v}" for k, v in o.items() if k != "kind" and v is not None)
    if o["kind"] == "dedup":
        extra = f" threshold={o['threshold']} num_perm={o['num_perm']} ngram={o['ngram']}" * (o["method"] == "minhash")
        return f"dedup {o['method']}{extra}" + ("" if o["normalize"] else " (not normalized)")
    if o["kind"] == "score":
        keep = " ".join(f"{k}={v}" for k, v in o["keep"].items() if v is not None)
        bounds = "".join(f" {k}={o[k]}" for k in ("min_score", "max_score") if o[k] is not None)
        return f"score {o['by']} ({record.get('model')}) keep {keep}, {o['order']}{bounds}"
    return "random " + (f"fraction={o['fraction']}" if o["fraction"] is not None else f"count={o['count']}") + \
        f" seed={record.get('seed')}"


def summary_lines(records: list[dict] | None) -> list[str]:
    """One line per step, as the data stage prints them."""
    lines = []
    for r in records or []:
        line = f"select[{r['step']}] {describe(r)}: {r['rows_in']} -> {r['rows_out']} rows ({r['removed']} removed)"
        s = r.get("scores")
        if s:
            line += f"; scores min {s['min']:g} median {s['median']:g} max {s['max']:g}, cut {s['cut']}"
        lines.append(line)
    return lines
