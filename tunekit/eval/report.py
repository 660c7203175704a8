"""The eval report: report.json (every number), report.md (tables a person reads) and PNG plots.

Numbers are rounded to 6 decimals once, in `build`; report.md prints those same values with `repr`,
so every number in the markdown parses back to exactly the number in the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def diff(tuned: dict, base: dict) -> dict:
    return {k: tuned[k] - base[k] for k in tuned if k in base}


def build(meta: dict, results: dict[str, dict], training: dict | None) -> dict:
    """results: task name -> {"kind", "tuned": runner output, "base": runner output or None}."""
    tasks = {}
    for name, r in results.items():
        tuned, base = r["tuned"], r.get("base")
        t_m = _round(tuned["metrics"])
        b_m = _round(base["metrics"]) if base else None
        samples = []
        for i, s in enumerate(tuned.get("samples", [])):
            row = {"prompt": s["prompt"], "reference": s["reference"], "tuned": s["prediction"]}
            if base and base.get("samples"):
                row["base"] = base["samples"][i]["prediction"]
            samples.append(row)
        tasks[name] = {"kind": r["kind"], "n": tuned["n"], "tuned": t_m, "base": b_m,
                       "diff": _round(diff(t_m, b_m)) if b_m else None, "samples": samples,
                       **({"rows_without_tokens": tuned["rows_without_tokens"]} if "rows_without_tokens" in tuned
                          else {})}
    return {**meta, "training": _round(training) if training else None, "tasks": tasks}


def fmt(x: Any) -> str:
    return "" if x is None else repr(x) if isinstance(x, float) else str(x)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def markdown(report: dict, shown: int) -> str:
    has_base = any(t["base"] for t in report["tasks"].values())
    lines = [f"# Eval report: `{report['target']}`", "",
             f"- model evaluated: `{report['model']}`" + (f" (base: `{report['base_model']}`)" if has_base else ""),
             f"- created: {report['created']} in {report['seconds']} s", ""]
    tr = report.get("training")
    if tr:
        lines += ["## Training", "", "| quantity | value |", "| --- | ---: |"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in tr.items() if isinstance(v, (int, float))]
        lines += ["", *(f"![{p}]({p})" for p in report["plots"] if p.startswith("training")), ""]
    lines += ["## Results", ""]
    for name, t in report["tasks"].items():
        data = report.get("task_data", {}).get(name)
        source = f" from `{data['path']}` (sha256 {data['sha256'][:12]})" if data else ""
        lines += [f"### {name}", "", f"{t['kind']} task, {t['n']} examples{source}.", ""]
        if t["base"]:
            lines += ["| metric | base | tuned | diff |", "| --- | ---: | ---: | ---: |"]
            lines += [f"| {m} | {fmt(t['base'].get(m))} | {fmt(v)} | {fmt(t['diff'].get(m))} |"
                      for m, v in t["tuned"].items()]
        else:
            lines += ["| metric | value |", "| --- | ---: |"] + [f"| {m} | {fmt(v)} |" for m, v in t["tuned"].items()]
        lines.append("")
        if t["samples"] and shown:
            head = ["prompt", "reference", *(["base"] if t["base"] else []), "tuned"]
            lines += ["Sample outputs:", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
            for s in t["samples"][:shown]:
                cells = [s["prompt"], s["reference"], *([s.get("base", "")] if t["base"] else []), s["tuned"]]
                lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
            lines.append("")
    if any(p.startswith("metrics") for p in report["plots"]):
        lines += ["## Plots", "", *(f"![{p}]({p})" for p in report["plots"] if p.startswith("metrics")), ""]
    return "\n".join(lines)


def read_metrics(metrics_path: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl ([] when it has none)."""
    if not metrics_path.is_file():
        return []
    return [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]


def loss_points(rows: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """(step, train loss) and (step, eval loss) pairs of metrics rows."""
    return ([(r["step"], r["loss"]) for r in rows if r.get("loss") is not None],  # null: not finite
            [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None])


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(metrics_path: Path, out: Path) -> str | None:
    rows = read_metrics(metrics_path)
    loss, ev = loss_points(rows)
    if not loss:
        return None
    plt = pyplot()
    lr = [(r["step"], r["learning_rate"]) for r in rows if "learning_rate" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    a.plot(*zip(*loss), label="train loss")
    if ev:
        a.plot(*zip(*ev), "o-", label="eval loss")
    a.set(xlabel="step", ylabel="loss", title="loss")
    a.legend()
    if lr:
        b.plot(*zip(*lr), color="tab:green")
    b.set(xlabel="step", ylabel="learning rate", title="learning rate")
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=72)
    plt.close(fig)
    return "training.png"


SKIP_IN_BARS = ("tokens", "perplexity")


def plot_metrics(report: dict, out: Path) -> str | None:
    tasks = {n: t for n, t in report["tasks"].items() if any(m not in SKIP_IN_BARS for m in t["tuned"])}
    if not tasks:
        return None
    plt = pyplot()

    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1, 3), squeeze=False)
    for ax, (name, t) in zip(axes[0], tasks.items()):
        names = [m for m in t["tuned"] if m not in SKIP_IN_BARS]
        xs = range(len(names))
        if t["base"]:
            ax.bar([x - 0.2 for x in xs], [t["base"].get(m, 0.0) for m in names], 0.4, label="base")
            ax.bar([x + 0.2 for x in xs], [t["tuned"][m] for m in names], 0.4, label="tuned")
            ax.legend(fontsize=7)
        else:
            ax.bar(list(xs), [t["tuned"][m] for m in names], 0.6)
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=72)
    plt.close(fig)
    return "metrics.png"
