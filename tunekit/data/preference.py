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

from tunekit.data.formats import ROLES, RowError, _get
from tunekit.data.schema import NON_SFT_FORMATS, DataConfig, DatasetSpec
from tunekit.data.sources import read_rows
from tunekit.errors import UserError


def _prompt(value: object, where: str) -> list[dict]:
    """A prompt is a string (one user turn) or a list of {role, content} messages ending before the answer."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{where}: `prompt` is empty")
        return [{"role": "user", "content": value}]
    return _messages(value, "prompt", where)


def _answer(value: object, field: str, where: str) -> list[dict]:
    """A completion is a string (one assistant turn) or a list of assistant messages."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{where}: `{field}` is empty")
        return [{"role": "assistant", "content": value}]
    return _messages(value, field, where)


def _messages(value: object, field: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowError(f"{where}: `{field}` must be a string or a non-empty list of {{role, content}} messages, "
                       f"found {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RowError(f"{where}: {field}[{i}] must be {{role: {'|'.join(ROLES)}, content: str}}")
        out.append({"role": m["role"], "content": m["content"]})
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


def read_spec(spec: DatasetSpec, cfg: DataConfig, dropped: Counter) -> list[dict]:
    loaded = read_rows(spec)
    convert = ROW_CONVERTERS[spec.format]
    out = []
    for row, where in zip(loaded.rows, loaded.where):
        try:
            out.append(convert(row, spec, where))
        except RowError as e:
            if not (cfg.drop_invalid_pairs and spec.format != "prompt_answer"):
                raise
            reason = "chosen identical to rejected" if "identical" in str(e) else "invalid row"
            dropped[reason] += 1
    return out


def build_preference_datasets(cfg: DataConfig, tokenizer: Any, seed: int) -> tuple[Any, Any | None, dict]:
    """Returns (train Dataset, eval Dataset or None, stats) with the conversational columns TRL reads."""
    from datasets import Dataset

    if not getattr(tokenizer, "chat_template", None):
        raise UserError("model: the tokenizer has no chat template; choose a model whose tokenizer ships one")
    kinds = {s.format for s in [*cfg.train, *cfg.eval]}
    if len(kinds) > 1:
        raise UserError(f"data: all datasets of one run must share a format; found {', '.join(sorted(kinds))}")
    dropped_train, dropped_eval = Counter(), Counter()
    train = [r for spec in cfg.train for r in read_spec(spec, cfg, dropped_train)]
    rng = random.Random(cfg.data_seed(seed))
    rng.shuffle(train)
    evals = [r for spec in cfg.eval for r in read_spec(spec, cfg, dropped_eval)]
    if cfg.eval_fraction:
        n_eval = max(1, int(len(train) * cfg.eval_fraction))
        evals, train = train[:n_eval], train[n_eval:]
    if not train:
        raise UserError("data: no training rows left after dropping invalid pairs (see the drop counts)")
    stats = {"train": {"rows_out": len(train), "dropped": dict(dropped_train), "trained_tokens": "n/a"},
             "eval": {"rows_out": len(evals), "dropped": dict(dropped_eval)} if cfg.eval else None,
             "train_rows": len(train), "eval_rows": len(evals)}
    return Dataset.from_list(train), (Dataset.from_list(evals) if evals else None), stats


def is_preference_data(cfg: DataConfig) -> bool:
    return any(s.format in NON_SFT_FORMATS for s in [*cfg.train, *cfg.eval])
