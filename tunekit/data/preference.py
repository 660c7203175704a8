"""Data formats for preference and RL trainers: `preference`, `unpaired_preference`, `prompt_answer`.

Rows are validated one by one (errors name the file and row) and converted to the conversational
columns TRL's trainers read; TRL applies the chat template and tokenizes itself (its DPO, KTO, ORPO and CPO
trainers tokenize every row whatever columns they are given, so tokenizing here would be done twice). The build
(build.prepare with `PAIRS`) is the SFT one: rows read on demand, converted and render-checked in batches on
`data.num_proc` processes (`encode_pairs`), kept as JSON text in Arrow work files, then written in the shuffled
order as typed Arrow columns into the cache entry, which the trainers read memory-mapped:

    preference          {prompt, chosen, rejected}   -> DPO / ORPO / CPO (KTO splits each pair in two)
    unpaired_preference {prompt, completion, label}  -> KTO
    prompt_answer       {question, answer, solution} -> ReFT: warm-up SFT on question -> solution,
                                                       RL on prompt = question with `answer` for the rewards
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from tunekit import answers
from tunekit.data.arrow_rows import Encoded, RowWriter
from tunekit.data.encode import CHUNK
from tunekit.data.formats import RowError, _get, _row_tools, with_row_system
from tunekit.data.masking import answer_lost, calls_lost, check_answers, without_text_beside_calls
from tunekit.data.messages import ROLE_ALIASES, merge_system_into_first_user, message
from tunekit.data.pair_tokens import pair_ids, pair_texts, row_tools
from tunekit.data.schema import NON_SFT_FORMATS, DataConfig, DatasetSpec
from tunekit.data.select import Pool, check_records, reason, select
from tunekit.data.select_rows import row_scorer
from tunekit.data.select_sft import Provenance
from tunekit.data.sources import Rows
from tunekit.data.stats import DataStats
from tunekit.data.templates import TemplateFailure, tools_ignored
from tunekit.data.turns import split_reasoning
from tunekit.errors import UserError
from tunekit.model.schema import ModelConfig


def _prompt(value: object, where: str, name: str = "prompt") -> list[dict]:
    """A prompt is a string (one user turn) or a list of messages ending with the user (or tool) turn answered.
    `name`: the row's column it came from (`columns: {prompt: question}` reads `question`)."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{where}: `{name}`{' (the prompt)' if name != 'prompt' else ''} is empty")
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
            raise RowError(f"{where}: `{field}` is empty; fix or remove the row (or set data.drop_invalid_pairs: "
                           "true to drop such rows and count them)")
        return [{"role": "assistant", "content": value}]
    msgs = _messages(value, field, where)
    if msgs[0]["role"] != "assistant":
        raise RowError(f"{where}: `{field}` must start with an assistant turn; its first turn is "
                       f"{msgs[0]['role']!r}. Check the column mapping (`columns:`): prompt and completion may be "
                       "swapped")
    for k, m in enumerate(msgs):
        if m["role"] == "assistant" and not m.get("tool_calls") and not any(p.strip() for p in split_reasoning(m)):
            raise RowError(f"{where}: `{field}[{k}]` is an empty assistant turn (no text, tool calls or reasoning), "
                           "so the answer would be only the end of turn; fix or remove the row (or set "
                           "data.drop_invalid_pairs: true to drop such rows and count them)")
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


def _context(prompt: object, row: dict, spec: DatasetSpec, where: str) -> tuple[list[dict], dict]:
    """The row's prompt with its system text (the row's `system` column, else the dataset's `system:`) in front
    unless it starts with a system message, and its tool schemas (the row's `tools` column, else the dataset's
    `tools:` file) as the JSON text the row keeps them in."""
    tools = _row_tools(row, spec, where)
    msgs = with_row_system(_prompt(prompt, where, spec.columns.get("prompt", "prompt")), row, spec, where)
    return msgs, {"tools": json.dumps(tools)} if tools else {}


def _is_conversation(value: object) -> bool:
    """A whole conversation, not an answer: a list of messages that starts with another role than the assistant,
    or has a user turn (a conversation that opens with an assistant greeting)."""
    if not (isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)):
        return False
    roles = [ROLE_ALIASES.get(m.get("role"), m.get("role")) for m in value]
    return roles[0] != "assistant" or "user" in roles


HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_dialogue(text: object) -> list[dict] | None:
    """Anthropic/hh-rlhf's transcript (`\\n\\nHuman: ...\\n\\nAssistant: ...`, also without the leading blank lines
    as a `.strip()` leaves it) as messages; None for other text."""
    if not isinstance(text, str):
        return None
    text = text.lstrip()
    if not (text.startswith("Human:") and "\n\nAssistant:" in text):
        return None
    parts = HH_TURN.split("\n\n" + text)
    return [{"role": "user" if who == "Human" else "assistant", "content": said.strip()}
            for who, said in zip(parts[1::2], parts[2::2])]


def hh_prompt(prompt: object, where: str) -> list[dict] | None:
    """A `prompt` column holding an hh-rlhf transcript that ends with the `Assistant:` to be answered (Dahoas/
    full-hh-rlhf, rm-static) as the conversation it is (it was one user turn, markers included); None otherwise."""
    turns = hh_dialogue(prompt)
    if turns is None:
        return None
    if turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns = turns[:-1]  # the empty `Assistant:` the answers follow
    if turns[-1]["role"] != "user":
        raise RowError(f"{where}: `prompt` is an hh-rlhf transcript whose last turn is the assistant's, so there is "
                       "no question for the answers to answer; end it with a `Human:` turn (and `Assistant:`)")
    return turns


def _split_pair(row: dict, spec: DatasetSpec, where: str) -> tuple[object, object, object]:
    """(prompt, chosen, rejected). Where `chosen` and `rejected` are whole conversations (UltraFeedback's
    `chosen: [user, assistant]`, HH-RLHF's conversational copies without a `prompt` column, Anthropic/hh-rlhf's
    `Human:` / `Assistant:` transcripts), the prompt is the
    messages they share and the answers what follows (TRL's `extract_prompt`); a `prompt` column beside them must
    name that shared conversation (`_names_prompt`)."""
    chosen, rejected = _get(row, "chosen", spec, where), _get(row, "rejected", spec, where)
    if _get(row, "prompt", spec, where, optional=True) is None and hh_dialogue(chosen) and hh_dialogue(rejected):
        chosen, rejected = hh_dialogue(chosen), hh_dialogue(rejected)  # Anthropic/hh-rlhf: whole transcripts
    if not (_is_conversation(chosen) and _is_conversation(rejected)):
        prompt = _get(row, "prompt", spec, where)
        turns = hh_prompt(prompt, where)
        if turns is not None and isinstance(chosen, str) and isinstance(rejected, str):
            return turns, chosen.strip(), rejected.strip()  # the answers follow `Assistant:` after a space
        return prompt, chosen, rejected
    prompt = _get(row, "prompt", spec, where, optional=True)
    c, r = _messages(chosen, "chosen", where), _messages(rejected, "rejected", where)
    k = next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), min(len(c), len(r)))
    if c == r:
        raise RowError(f"{where}: `chosen` and `rejected` are identical conversations, so the pair teaches nothing; "
                       "fix or remove the row (or set data.drop_invalid_pairs: true to drop such rows and count them)")
    if k == 0 or k == len(c) or k == len(r):
        raise RowError(f"{where}: `chosen` and `rejected` are whole conversations (they start with a "
                       f"{c[0]['role']} turn) but {'share no first message' if k == 0 else 'one contains the other'}, "
                       "so there is no shared prompt to answer. Give a `prompt` and answers that start with the "
                       "assistant turn")
    if c[k]["role"] != "assistant" or r[k]["role"] != "assistant":
        raise RowError(f"{where}: `chosen` and `rejected` are whole conversations that first differ at message "
                       f"{k + 1}, a {c[k]['role'] if c[k]['role'] != 'assistant' else r[k]['role']} turn; the "
                       "answers of a pair must start with the assistant turn that follows a shared prompt")
    if prompt is not None and not _names_prompt(prompt, c[:k]):
        raise RowError(f"{where}: `prompt` is not the conversation that `chosen` and `rejected` share (their first "
                       f"{k} message(s)), so it is unclear what the answers answer. Remove the `prompt` column (the "
                       "prompt is then read from the conversations) or give answers without the prompt's turns")
    return c[:k], c[k:], r[k:]


def _names_prompt(prompt: object, shared: list[dict]) -> bool:
    """A `prompt` column beside whole conversations is their shared messages, or the text of its first user turn
    (argilla/distilabel-capybara-dpo: the conversation's opening question) or of its last, the one answered
    (HuggingFaceH4/ultrafeedback_binarized, where the two are the same)."""
    if prompt == shared:
        return True
    users = [m["content"].strip() for m in shared if m["role"] == "user" and isinstance(m.get("content"), str)]
    return (isinstance(prompt, str) and shared[-1]["role"] == "user" and bool(users)
            and prompt.strip() in (users[0], users[-1]))


def preference_row(row: dict, spec: DatasetSpec, where: str) -> dict:
    prompt_value, chosen_value, rejected_value = _split_pair(row, spec, where)
    prompt, tools = _context(prompt_value, row, spec, where)
    chosen = _answer(chosen_value, "chosen", where)
    rejected = _answer(rejected_value, "rejected", where)
    if chosen == rejected:
        raise RowError(f"{where}: `chosen` and `rejected` are identical, so the pair teaches nothing; fix or remove "
                       "the row (or set data.drop_invalid_pairs: true to drop such rows and count them)")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **tools}


def unpaired_row(row: dict, spec: DatasetSpec, where: str) -> dict:
    prompt_value, completion_value = _get(row, "prompt", spec, where), _get(row, "completion", spec, where)
    turns = hh_prompt(prompt_value, where)
    if turns is not None and isinstance(completion_value, str):
        prompt_value, completion_value = turns, completion_value.strip()
    prompt, tools = _context(prompt_value, row, spec, where)
    completion = _answer(completion_value, "completion", where)
    label = _get(row, "label", spec, where)
    if not isinstance(label, bool):
        raise RowError(f"{where}: `label` must be true (desirable) or false (undesirable), found {label!r}")
    return {"prompt": prompt, "completion": completion, "label": label, **tools}


def prompt_answer_row(row: dict, spec: DatasetSpec, where: str) -> dict:
    question = _get(row, "question", spec, where)
    if not isinstance(question, str) or not question.strip():
        raise RowError(f"{where}: `question` must be a non-empty string")
    answer, solution = _answer_and_solution(row, spec, where)
    if _get(row, "tools", spec, where, optional=True):
        raise RowError(f"{where}: `tools` are not supported for `prompt_answer` rows (the RL stage generates "
                       "without them); remove them from the rows or the dataset")
    prompt = with_row_system([{"role": "user", "content": question}], row, spec, where)
    return {"prompt": prompt, "question": question, "answer": str(answer), "solution": solution}


def _answer_and_solution(row: dict, spec: DatasetSpec, where: str) -> tuple[object, str]:
    """The answer and the reasoning path, also from datasets as they ship: GSM8K's `answer` is the path ending in
    `#### N` (N the answer); MATH's and NuminaMath's rows have only a `solution`, its answer in `\\boxed{}`. A
    solution that marks a final answer must mark this one: the warm-up would teach what the reward scores wrong."""
    answer = _get(row, "answer", spec, where, optional="answer" not in spec.columns)
    solution = _get(row, "solution", spec, where, optional="solution" not in spec.columns)
    if solution is None and isinstance(answer, str) and answers.MARK in answer:  # GSM8K as it ships
        solution, answer = answer, answers.final_answer(answer)
    if answer is None and isinstance(solution, str) and answers.marked(solution):  # MATH as it ships
        answer = answers.final_answer(solution)
    if answer is None:
        answer = _get(row, "answer", spec, where)  # the missing-column error
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or str(answer).strip() == "":
        marked_empty = isinstance(solution, str) and answers.MARK in solution and answer == ""
        raise RowError(f"{where}: " + ("the text after `####` (the answer) is empty" if marked_empty else
                                       f"`answer` must be a non-empty string or a number, found {answer!r}"))
    if solution is None:
        solution = _get(row, "solution", spec, where)  # the missing-column error
    if not isinstance(solution, str) or not solution.strip():
        raise RowError(f"{where}: `solution` (the reasoning path used by the warm-up) must be a non-empty string")
    if answers.marked(solution) and not answers.same_answer(solution, str(answer)):
        raise RowError(f"{where}: the solution ends in {answers.final_answer(solution)[:40]!r} but the answer is "
                       f"{str(answer)[:40]!r}: the warm-up would teach an answer the reward scores as wrong. Fix the "
                       "row, or check the `columns:` mapping")
    return answer, solution


ROW_CONVERTERS = {"preference": preference_row, "unpaired_preference": unpaired_row,
                  "prompt_answer": prompt_answer_row}


def check_renders(render: Any, row: dict, where: str) -> None:
    """Render the row as the trainer will (`pair_tokens.pair_texts`: the prompt with the generation prompt, each
    answer as the model writes it after it), so that an error raised inside the chat template names the row
    instead of escaping from the trainer's dataset map; tool schemas the template does not render, an assistant
    turn's text it drops from the prompt (the text beside tool calls: Llama 3.1, Mistral v0.3), or an answer's text
    or reasoning it drops, are errors rather than silently left out of the pair."""
    answers = {k: row[k] for k in ("chosen", "rejected", "completion") if k in row}
    if "solution" in row:
        answers = {"solution": [{"role": "assistant", "content": row["solution"]}]}
    tools = row_tools(row)
    try:
        before = render(row["prompt"], add_generation_prompt=True, tools=tools)
        if tools and before == render(row["prompt"], add_generation_prompt=True):
            raise UserError(f"{where}: {tools_ignored(getattr(render, 'template_name', 'the chat template'))}")
        check_answers(render, row["prompt"], before, where, tools)
        for field, answer in answers.items():
            completion = pair_texts(render, row["prompt"], answer, where, tools, before)[1]
            _check_answer_kept(render, completion, answer, field, where)
    except TemplateFailure as e:
        raise UserError(f"{where}: {e}") from None


def _check_answer_kept(render: Any, completion: str, answer: list[dict], field: str, where: str) -> None:
    """Each answer turn's text and reasoning must be in the completion the trainer scores (Llama 3.1's template
    drops the text beside tool calls; Qwen2.5's never renders reasoning; DeepSeek-R1's strips it from every turn
    but the one the model writes after the prompt)."""
    for m in answer:
        if m.get("role") != "assistant":
            continue
        if error := (calls_lost(render, m, completion, f"{where}: `{field}`")
                     or answer_lost(render, m, completion, f"{where}: `{field}`")):
            raise error
        reasoning = split_reasoning(m)[0].strip()
        if reasoning and reasoning not in completion:
            raise UserError(
                f"{where}: {getattr(render, 'template_name', 'the chat template')} drops the reasoning of `{field}` "
                "when it renders the row, so the preference trainer would score the answer without it. Use a "
                "template that renders an answer's reasoning (data.chat_template: qwen3, or the model's own), or "
                "leave reasoning out of the preference rows.")


def encode_pairs(spec: DatasetSpec, rows: Rows, indices: list[int], cfg: DataConfig, tokenizer: Any, render: Any,
                 stats: DataStats, writer: RowWriter) -> None:
    """Convert, check and write (as JSON text) the rows at `indices`, `CHUNK` at a time: encode.encode_split's
    encoder for preference / RL rows. With data.drop_invalid_pairs a bad pair is dropped and counted."""
    convert = ROW_CONVERTERS[spec.format]
    drop = cfg.drop_invalid_pairs and spec.format != "prompt_answer"
    for start in range(0, len(indices), CHUNK):
        chunk = indices[start : start + CHUNK]
        raw, wheres = rows.fetch(chunk)
        for i, row, where in zip(chunk, raw, wheres):
            try:
                out = convert(row, spec, where)
                if cfg.system_role == "merge_into_first_user":  # the prompt holds the row's system text
                    out["prompt"] = list(merge_system_into_first_user(out["prompt"]))
                if cfg.drop_text_beside_tool_calls:
                    out.update({k: list(without_text_beside_calls(out[k]))
                                for k in ("prompt", "chosen", "rejected", "completion") if k in out})
            except RowError as e:
                if not drop:
                    raise
                stats.dropped["chosen identical to rejected" if "identical" in str(e) else "invalid row"] += 1
                continue
            check_renders(render, out, where)
            writer.add({"row": json.dumps(out).encode()})
            stats.rows_out += 1
            stats.origins.append(i << 16)


def split_stats(per: dict[str, DataStats], rows: int) -> dict:
    """A split's statistics: rows read, kept (after the eval hold-out) and dropped, per dataset and in total."""
    datasets = {path: {"rows_in": st.rows_in, "rows_out": st.rows_out, "dropped": dict(st.dropped),
                       **({"repeated": st.repeated} if st.repeated else {})} for path, st in per.items()}
    dropped: Counter = Counter()
    for st in per.values():
        dropped.update(st.dropped)
    return {"rows_in": sum(st.rows_in for st in per.values()), "rows_out": rows, "dropped": dict(dropped),
            "datasets": datasets, "trained_tokens": "n/a"}


def empty_error(split: str, selected: bool) -> UserError | None:
    """Preference data: an empty training set is an error; an eval set emptied by dropped pairs is left out."""
    if split != "training":
        return None
    return UserError(f"data: no training rows left after dropping invalid pairs{' and data.select' if selected else ''}"
                     " (see the drop counts)")


def check_one_format(cfg: DataConfig) -> str:
    kinds = {s.format for s in [*cfg.train, *cfg.eval]}
    if len(kinds) > 1:
        raise UserError(f"data: all datasets of one run must share a format; found {', '.join(sorted(kinds))}")
    return kinds.pop()


def _answers(row: dict) -> list[list[dict]]:
    if "solution" in row:
        return [[{"role": "assistant", "content": row["solution"]}]]
    return [row[k] for k in ("chosen", "rejected", "completion") if k in row]


def row_text(row: dict, render: Any) -> str:
    """What dedup compares: the prompt rendered with each answer (chosen and rejected; the completion and its label;
    the ReFT solution and its answer)."""
    parts = [render([*row["prompt"], *answer], tools=row_tools(row)) for answer in _answers(row)]
    parts += [f"label: {row['label']}"] if "label" in row else []
    parts += [f"answer: {row['answer']}"] if "answer" in row and "solution" in row else []
    return "\n".join(parts)


def row_pool(fetch: Any, identity: Any, render: Any, tokenizer: Any, score: Any = None) -> Pool:
    """Preference / ReFT rows as a selection pool (`fetch`: indices -> rows): tokens = the longest prompt + answer,
    trained tokens = the longest answer, as the trainers score them (`pair_tokens`); `score`: see select_rows.py."""
    import numpy as np

    def count(row: dict) -> tuple[int, int]:
        tools = row_tools(row)
        pairs = [pair_ids(tokenizer, *pair_texts(render, row["prompt"], a, "select", tools)) for a in _answers(row)]
        return max(len(p) + len(a) for p, a in pairs), max(len(a) for _, a in pairs)

    def counts(idx: Any) -> tuple[Any, Any]:
        pairs = [count(r) for r in fetch(idx)]
        return np.asarray([t for t, _ in pairs], dtype=np.int64), np.asarray([a for _, a in pairs], dtype=np.int64)

    return Pool(identity=identity, texts=lambda idx: [row_text(r, render) for r in fetch(idx)], counts=counts,
                score=score)


def select_rows(cfg: DataConfig, enc: Encoded, prov: Provenance, order: list[int], per: dict[str, DataStats],
                tokenizer: Any, render: Any, seed: int, model: ModelConfig | None = None) -> tuple[list[int], list[dict]]:
    """`data.select` over the training order (indices of the encoded rows, in dataset order); the rows removed are
    counted per dataset with their step. `model`: the default scoring model of score steps."""
    scorer = row_scorer(enc.json_rows, render, tokenizer, model, cfg.max_length)
    kept, records, removed = select(cfg.select, row_pool(enc.json_rows, prov.identity, render, tokenizer, scorer),
                                    order, seed)
    check_records(records, len(order), len(kept))
    for i, (step, gone) in enumerate(zip(cfg.select, removed)):
        for j in gone.tolist():
            st = per[prov.paths[int(prov.owner[j])]]
            st.dropped[reason(i, step)] += 1
            st.rows_out -= 1
    return kept.tolist(), records


def is_preference_data(cfg: DataConfig) -> bool:
    return any(s.format in NON_SFT_FORMATS for s in [*cfg.train, *cfg.eval])
