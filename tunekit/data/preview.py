"""`tunekit preprocess`: run the data stage, write the cache, print statistics and marked examples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunekit.data.build import build_datasets
from tunekit.data.packing import unpack
from tunekit.data.preview_rows import CLOSE, OPEN, marked, preference_table, show_rows
from tunekit.data.schema import NON_SFT_FORMATS
from tunekit.data.select import describe
from tunekit.model.builtin import TOKENIZER_DIR, is_builtin
from tunekit.model.load import load_tokenizer

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe



def load_data_tokenizer(recipe: Recipe) -> Any:
    """The recipe's tokenizer; a builtin model's tokenizer is read from the shipped files (no model built)."""
    if is_builtin(recipe.model.path) and not recipe.model.tokenizer:
        return load_tokenizer(recipe.model, str(TOKENIZER_DIR))
    return load_tokenizer(recipe.model)


def stats_tables(stats: dict) -> list[Table]:
    rows = Table(title="rows and tokens per dataset", title_justify="left")
    for col in ("split", "dataset", "rows in", "rows out", "tokens", "trained tokens", "truncated", "dropped (reason), repeated"):
        rows.add_column(col, justify="left" if col in ("split", "dataset", "dropped (reason), repeated") else "right")
    for split in ("train", "eval"):
        s = stats.get(split)
        if not s:
            continue
        for name, d in [*s["datasets"].items(), ("total", s)]:
            dropped = "; ".join(f"{n} {r}" for r, n in d["dropped"].items()) or "0"
            if d.get("repeated"):
                dropped += f"; {d['repeated']} repeated (upsampled)"
            if d.get("split_rows"):
                dropped += f"; {d['split_rows']} rows split per assistant turn (+{d['expanded']} examples)"
            rows.add_row(split, escape(name), str(d["rows_in"]), str(d["rows_out"]), f"{d['tokens']:,}",
                         f"{d['trained_tokens']:,}", str(d["truncated"]), escape(dropped))  # paths: `mix/[ab].*`
    out = [rows]
    pk = stats["train"].get("packing")
    summary = Table(title="summary", title_justify="left", show_header=False)
    summary.add_column("key")
    summary.add_column("value")
    summary.add_row("train rows (after packing)" if pk else "train rows", str(stats["train_rows"]))
    summary.add_row("eval rows", str(stats["eval_rows"]) + (f" ({stats['held_out_for_eval']} held out from train)"
                                                             if stats.get("held_out_for_eval") else ""))
    summary.add_row("packing efficiency", f"{pk['efficiency']:.4f} ({pk['examples']} examples in {pk['rows']} rows "
                    f"of {pk['capacity']})" if pk else "off")
    summary.add_row("chat template", str(stats.get("chat_template")))
    summary.add_row("cache", f"{stats.get('cache')} {stats.get('cache_dir')}")
    out.append(summary)
    hist = Table(title="example lengths (train, tokens)", title_justify="left")
    hist.add_column("length")
    hist.add_column("rows", justify="right")
    hist.add_column("")
    top = max((b["rows"] for b in stats["train"]["length_histogram"]), default=0) or 1
    for b in stats["train"]["length_histogram"]:
        hist.add_row(f"{b['from']}-{b['to']}", str(b["rows"]), "#" * round(40 * b["rows"] / top))
    out.append(hist)
    return out


def select_table(records: list[dict]) -> Table:
    """data.select, one line per step: rows in and out, and for score steps the scores and the cut."""
    table = Table(title="data selection (train, steps in order)", title_justify="left")
    for col in ("step", "kind", "options", "rows in", "rows out", "removed", "scores min / median / max", "cut"):
        table.add_column(col, justify="right" if col.startswith(("rows", "removed", "cut")) else "left")
    for r in records:
        s = r.get("scores")
        table.add_row(str(r["step"]), r["kind"], escape(describe(r).split(" ", 1)[-1]), str(r["rows_in"]), str(r["rows_out"]), str(r["removed"]),
                      f"{s['min']:g} / {s['median']:g} / {s['max']:g}" if s else "", str(s["cut"]) if s else "")
    return table


def _trainer_cuts(console: Console, recipe: Recipe, tokenizer: Any, train: Any) -> None:
    """What the dpo / kto trainer will do to these rows at data.max_length (`tunekit train` warns and counts the
    same): rows dropped because their prompt fills it, answers cut there."""
    kind = recipe.trainer.kind
    if kind not in ("dpo", "kto") or train is None or not len(train):
        return
    from tunekit.data.pair_tokens import at_max_length, exact_pairs

    ids = exact_pairs(train, tokenizer, "dpo" if "chosen" in train.column_names else "kto")
    per_row = [at_max_length(r, recipe.data.max_length) for r in ids]
    examples = 2 if kind == "kto" and "chosen" in train.column_names else 1  # KTO: each answer is an example
    dropped = examples * sum(not keep for keep, _ in per_row)
    cut = sum(n if kind == "kto" else n > 0 for _, n in per_row)
    if dropped or cut:
        console.print(f"[yellow]at data.max_length {recipe.data.max_length}, the {kind} trainer will drop {dropped} "
                      f"train examples (prompt alone fills it) and score {cut} without the end of their answer[/]")


def preprocess(recipe: Recipe, show: int = 0) -> dict:

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    tokenizer = load_data_tokenizer(recipe)
    train, _, stats = build_datasets(recipe.data, tokenizer, recipe.trainer.seed, recipe.model)
    selection = [select_table(stats["train"]["select"])] if stats["train"].get("select") else []
    if stats.get("format") in NON_SFT_FORMATS:  # conversational rows for TRL: shown as TRL renders them
        for table in [preference_table(stats), *selection]:
            console.print(table)
        console.print(f"train rows {stats['train_rows']}, eval rows {stats['eval_rows']}, chat template "
                      f"{stats['chat_template']}")
        _trainer_cuts(console, recipe, tokenizer, train)
        show_rows(console, tokenizer, train, show, recipe.data.train_on)
        return stats
    for table in [*stats_tables(stats)[:1], *selection, *stats_tables(stats)[1:]]:
        console.print(table)
    shown = 0
    for row in train:
        for ex in unpack(row):
            if shown >= show:
                break
            shown += 1
            console.rule(escape(f"example {shown} ({len(ex['input_ids'])} tokens, "
                         f"{sum(lab != -100 for lab in ex['labels'])} trained; trained text is {OPEN}marked{CLOSE})"))
            console.print(marked(tokenizer, ex["input_ids"], ex["labels"]))
        if shown >= show:
            break
    return stats
