"""Data formats for preference and RL trainers: `preference`, `unpaired_preference`, `prompt_answer`.

Rows are validated one by one (errors name the file and row) and converted to the conversational
columns TRL's trainers read; TRL applies the chat template itself:

    preference          {prompt, chosen, rejected}   -> DPO / ORPO / CPO (KTO splits each pair in two)
    unpaired_preference {prompt, completion, label}  -> KTO
    prompt_answer       {question, answer, solution} -> ReFT: warm-up SFT on question -> solution,
                                                       RL on prompt = question with `answer` for the rewards
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from tunekit.data.formats import RowError, _get
from tunekit.data.messages import message
from tunekit.data.schema import NON_SFT_FORMATS, DataConfig, DatasetSpec
from tunekit.data.select import Pool, check_records, reason, select
from tunekit.data.select_rows import row_scorer
from tunekit.data.sources import read_rows
from tunekit.data.templates import TemplateFailure, apply_chat_template_choice, renderer
from tunekit.errors import UserError
from tunekit.model.schema import ModelConfig


def _prompt(value: object, where: str) -> list[dict]:
    """A prompt is a string (one user turn) or a list of messages ending with the user (or tool) turn answered."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{where}: `prompt` is empty")
        return [{"role": "user", "content": value}]
    msgs = _messages(value, "prompt", where)
    if msgs[-1]["role"] not in ("user", "tool"):
        raise RowError(f"{where}: `prompt` must end with the user (or tool) turn the completion answers; its last "
                       f"turn is {msgs[-1]['role']!r}. Check the column mapping (`columns:`): prompt and completion "
                       "may be swapped")
    return msgs


def _answer(value: object, field: str, where: str) -> list[dict]:
    """A completion is a string (one assistant turn) or a list of messages starting with an assistant turn."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{where}: `{field}` is empty")
        return [{"role": "assistant", "content": value}]
    msgs = _messages(value, field, where)
    if msgs[0]["role"] != "assistant":
        raise RowError(f"{where}: `{field}` must start with an assistant turn; its first turn is "
                       f"{msgs[0]['role']!r}. Check the column mapping (`columns:`): prompt and completion may be "
                       "swapped")
    return msgs


def _messages(value: object, field: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowError(f"{where}: `{field}` must be a string or a non-empty list of {{role, content}} messages, "
                       f"found {type(value).__name__}")
    out = [message(m, f"{field}[{i}]", where) for i, m in enumerate(value)]
    if any("train" in m for m in out):  # preference objectives score whole completions, never single turns
        raise RowError(f"{where}: `{field}` has per-message `train` flags, which preference trainers cannot honour "
                       "(they score the whole completion); remove them")
    return out


def preference_row(row: dict, spec: DatasetSpec, where: str) -> dict:
    prompt = _prompt(_get(row, "prompt", spec, where), where)
    chosen = _answer(_get(row, "chosen", spec, where), "chosen", where)
    rejected = _answer(_get(row, "rejected", spec, where), "rejected", where)
    if chosen == rejected:
        raise RowError(f"{where}: `chosen` and `rejected` are identical, so the pair teaches nothing; fix or remove "
                       "the row (or set data.drop_invalid_pairs: true to drop such rows and count them)")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def unpaired_row(row: dict, spec: DatasetSpec, where: str) -> dict:
    prompt = _prompt(_get(row, "prompt", spec, where), where)
    completion = _answer(_get(row, "completion", spec, where), "completion", where)
    label = _get(row, "label", spec, where)
    if not isinstance(label, bool):
        raise RowError(f"{where}: `label` must be true (desirable) or false (undesirable), found {label!r}")
    return {"prompt": prompt, "completion": completion, "label": label}


def prompt_answer_row(row: dict, spec: DatasetSpec, where: str) -> dict:
    question = _get(row, "question", spec, where)
    if not isinstance(question, str) or not question.strip():
        raise RowError(f"{where}: `question` must be a non-empty string")
    answer = _get(row, "answer", spec, where)
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or str(answer).strip() == "":
        raise RowError(f"{where}: `answer` must be a non-empty string or a number, found {answer!r}")
    solution = _get(row, "solution", spec, where)
    if not isinstance(solution, str) or not solution.strip():
        raise RowError(f"{where}: `solution` (the reasoning path used by the warm-up) must be a non-empty string")
    return {"prompt": [{"role": "user", "content": question}], "question": question, "answer": str(answer),
            "solution": solution}


ROW_CONVERTERS = {"preference": preference_row, "unpaired_preference": unpaired_row,
                  "prompt_answer": prompt_answer_row}


def check_renders(render: Any, row: dict, where: str) -> None:
    """Render the row as TRL will (prompt with the generation prompt; prompt + each answer), so that an error
    raised inside the chat template names the row instead of escaping from TRL's dataset map."""
    answers = [row[k] for k in ("chosen", "rejected", "completion") if k in row]
    if "solution" in row:
        answers = [[{"role": "assistant", "content": row["solution"]}]]
    try:
        render(row["prompt"], add_generation_prompt=True)
        for answer in answers:
            render([*row["prompt"], *answer])
    except TemplateFailure as e:
        raise UserError(f"{where}: {e}") from None


def read_spec(spec: DatasetSpec, cfg: DataConfig, render: Any, per: dict) -> list[dict]:
    loaded = read_rows(spec)
    convert = ROW_CONVERTERS[spec.format]
    out, dropped = [], Counter()
    for row, where in zip(loaded.rows, loaded.where):
        try:
            out.append(convert(row, spec, where))
        except RowError as e:
            if not (cfg.drop_invalid_pairs and spec.format != "prompt_answer"):
                raise
            dropped["chosen identical to rejected" if "identical" in str(e) else "invalid row"] += 1
            continue
        check_renders(render, out[-1], where)
    per[spec.path] = {"rows_in": len(loaded.rows), "rows_out": len(out), "dropped": dict(dropped)}
    return out


def _split_stats(per: dict, rows: int) -> dict:
    dropped: Counter = Counter()
    for d in per.values():
        dropped.update(d["dropped"])
    return {"rows_in": sum(d["rows_in"] for d in per.values()), "rows_out": rows, "dropped": dict(dropped),
            "datasets": per, "trained_tokens": "n/a"}


def build_preference_datasets(cfg: DataConfig, tokenizer: Any, seed: int,
                              model: ModelConfig | None = None) -> tuple[Any, Any | None, dict]:
    """Returns (train Dataset, eval Dataset or None, stats) with the conversational columns TRL reads.

    Sets `tokenizer.chat_template` to the recipe's choice, which TRL then renders with (and the run saves). `model`
    (the recipe's model section) is the default scoring model of `data.select` score steps."""
    from datasets import Dataset

    template = apply_chat_template_choice(tokenizer, cfg.chat_template)
    render = renderer(tokenizer, template, cfg.chat_template)  # type: ignore[arg-type]
    kinds = {s.format for s in [*cfg.train, *cfg.eval]}
    if len(kinds) > 1:
        raise UserError(f"data: all datasets of one run must share a format; found {', '.join(sorted(kinds))}")
    per_train: dict = {}
    per_eval: dict = {}
    rows = [(r, spec.path) for spec in cfg.train for r in read_spec(spec, cfg, render, per_train)]
    order = list(range(len(rows)))
    rng = random.Random(cfg.data_seed(seed))
    rng.shuffle(order)
    evals = [r for spec in cfg.eval for r in read_spec(spec, cfg, render, per_eval)]
    held_out = 0
    if cfg.eval_fraction:
        held_out = max(1, int(len(order) * cfg.eval_fraction))
        evals, order = [rows[i][0] for i in order[:held_out]], order[held_out:]
    records = None
    if cfg.select:  # after the hold-out, as for SFT data
        order, records = select_rows(cfg, rows, order, per_train, render, tokenizer, cfg.data_seed(seed), model)
    train = [rows[i][0] for i in order]
    if not train:
        raise UserError("data: no training rows left after dropping invalid pairs"
                        f"{' and data.select' if cfg.select else ''} (see the drop counts)")
    stats = {"train": _split_stats(per_train, len(train)), "eval": _split_stats(per_eval, len(evals)) if cfg.eval
             else None, "train_rows": len(train), "eval_rows": len(evals), "held_out_for_eval": held_out,
             "chat_template": cfg.chat_template or "tokenizer", "format": kinds.pop()}
    if records is not None:
        stats["train"]["select"] = records
    return Dataset.from_list(train), (Dataset.from_list(evals) if evals else None), stats


def _answers(row: dict) -> list[list[dict]]:
    if "solution" in row:
        return [[{"role": "assistant", "content": row["solution"]}]]
    return [row[k] for k in ("chosen", "rejected", "completion") if k in row]


def row_text(row: dict, render: Any) -> str:
    """What dedup compares: the prompt rendered with each answer (chosen and rejected; the completion and its label;
    the ReFT solution and its answer)."""
    parts = [render([*row["prompt"], *answer]) for answer in _answers(row)]
    parts += [f"label: {row['label']}"] if "label" in row else []
    parts += [f"answer: {row['answer']}"] if "answer" in row and "solution" in row else []
    return "\n".join(parts)


def row_pool(rows: list[dict], render: Any, tokenizer: Any, score: Any = None) -> Pool:
    """Preference / ReFT rows as a selection pool: tokens = the longest prompt + answer as rendered, trained tokens
    = the longest answer (its rendering after the prompt's generation prompt); `score`: see select_rows.py."""
    import numpy as np

    def count(row: dict) -> tuple[int, int]:
        prompt = len(tokenizer(render(row["prompt"], add_generation_prompt=True), add_special_tokens=False).input_ids)
        full = [len(tokenizer(render([*row["prompt"], *a]), add_special_tokens=False).input_ids)
                for a in _answers(row)]
        return max(full), max(n - prompt for n in full)

    def counts(idx: Any) -> tuple[Any, Any]:
        pairs = [count(rows[i]) for i in idx.tolist()]
        return np.asarray([t for t, _ in pairs], dtype=np.int64), np.asarray([a for _, a in pairs], dtype=np.int64)

    return Pool(identity=int, texts=lambda idx: [row_text(rows[i], render) for i in idx.tolist()], counts=counts,
                score=score)


def select_rows(cfg: DataConfig, rows: list[tuple[dict, str]], order: list[int], per: dict, render: Any,
                tokenizer: Any, seed: int, model: ModelConfig | None = None) -> tuple[list[int], list[dict]]:
    """`data.select` over the training order (indices of (row, dataset) pairs in dataset order); the rows removed
    are counted per dataset with their step."""
    plain = [r for r, _ in rows]
    scorer = row_scorer(plain, render, tokenizer, model, cfg.max_length)
    kept, records, removed = select(cfg.select, row_pool(plain, render, tokenizer, scorer), order, seed)
    check_records(records, len(order), len(kept))
    for i, (step, gone) in enumerate(zip(cfg.select, removed)):
        for j in gone.tolist():
            d = per[rows[j][1]]
            d["dropped"][reason(i, step)] = d["dropped"].get(reason(i, step), 0) + 1
            d["rows_out"] -= 1
    return kept.tolist(), records


def is_preference_data(cfg: DataConfig) -> bool:
    return any(s.format in NON_SFT_FORMATS for s in [*cfg.train, *cfg.eval])
