"""`tunekit preprocess` for preference and ReFT data: row counts, and rows shown as the trainers will see them.

Preference rows are shown as the trainers score them (`pair_tokens.pair_texts`): the prompt with the generation
prompt, then each answer as the model writes it after that prompt. Every answer token carries the objective, so
the whole answer is marked. ReFT rows show the question, the warm-up SFT example (question -> solution, the
solution marked as trained exactly as the warm-up masks it) and the answer the rewards compare against.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunekit.data.masking import tokenize_with_mask
from tunekit.data.pair_tokens import pair_texts, row_tools
from tunekit.data.templates import tokenizer_renderer

OPEN, CLOSE = "[[", "]]"  # around trained text, so the marking survives a terminal without colour


def marked(tokenizer: Any, ids: list[int], labels: list[int]) -> Text:
    """The example's text with trained tokens in bold green between [[ and ]]."""
    text = Text()
    i = 0
    while i < len(ids):
        trained = labels[i] != -100
        j = i
        while j < len(ids) and (labels[j] != -100) == trained:
            j += 1
        piece = tokenizer.decode(ids[i:j])
        text.append(f"{OPEN}{piece}{CLOSE}" if trained else piece, style="bold green" if trained else "dim")
        i = j
    return text


def preference_table(stats: dict) -> Table:
    table = Table(title=f"rows per dataset ({stats.get('format')})", title_justify="left")
    for col in ("split", "dataset", "rows in", "rows out", "dropped (reason)"):
        table.add_column(col, justify="right" if col.startswith("rows") else "left")
    for split in ("train", "eval"):
        s = stats.get(split)
        if not s:
            continue
        for name, d in [*s.get("datasets", {}).items(), ("total", s)]:
            dropped = "; ".join(f"{n} {r}" for r, n in d["dropped"].items()) or "0"
            table.add_row(split, escape(name), str(d.get("rows_in", "")), str(d["rows_out"]), escape(dropped))
    return table


def _label(name: str) -> Text:
    return Text(f"{name}: ", style="bold")


def _trained(text: str) -> Text:
    return Text(f"{OPEN}{text}{CLOSE}", style="bold green")


def show_preference_row(console: Console, tokenizer: Any, row: dict, n: int) -> None:
    render = tokenizer_renderer(tokenizer)
    answers = {k: row[k] for k in ("chosen", "rejected", "completion") if k in row}
    tools = row_tools(row)
    texts = {k: pair_texts(render, row["prompt"], answer, f"example {n}", tools) for k, answer in answers.items()}
    console.rule(escape(f"example {n} (prompt, then each answer as the model writes it after the prompt; "
                        f"trained text is {OPEN}marked{CLOSE})"))
    console.print(_label("prompt") + Text(next(iter(texts.values()))[0], style="dim"))
    for key, (_, completion) in texts.items():
        name = f"completion ({'desirable' if row['label'] else 'undesirable'})" if key == "completion" else key
        console.print(_label(name) + _trained(completion))


def show_reft_row(console: Console, tokenizer: Any, row: dict, n: int, train_on: str) -> None:
    enc = tokenize_with_mask(tokenizer, [*row["prompt"], {"role": "assistant", "content": row["solution"]}],
                             train_on, f"example {n}")
    labels = [t if m else -100 for t, m in zip(enc["input_ids"], enc["mask"])]
    console.rule(escape(f"example {n} (ReFT: warm-up SFT example, trained text is {OPEN}marked{CLOSE}; RL rewards "
                        "compare against the answer)"))
    console.print(_label("question") + Text(row["question"]))
    console.print(_label("solution (warm-up)") + marked(tokenizer, enc["input_ids"], labels))
    console.print(_label("answer") + Text(row["answer"]))


def show_rows(console: Console, tokenizer: Any, rows: Any, show: int, train_on: str) -> None:
    for n, row in enumerate(rows, 1):
        if n > show:
            break
        if "solution" in row:
            show_reft_row(console, tokenizer, row, n, train_on)
        else:
            show_preference_row(console, tokenizer, row, n)
