"""compare.json (every number), compare.md (the table) and compare.png (loss curves overlaid) in the parent dir.

The numbers come from each variant's run dir: summary.json (parameters, steps, train time, final loss, eval at
the end, measured peak memory), metrics.jsonl (tokens/s, the curves) and eval/report.json when the recipe runs
its eval tasks after training (`eval.run_after_train: true`). They are rounded once, in `numbers`; compare.md
prints those same values, so the markdown and the JSON agree. Both files are rewritten after every variant.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit import run_dir
from tunekit.eval import report as rep

if TYPE_CHECKING:
    from tunekit.compare.grid import Axis, Variant

JSON, MD, PNG = "compare.json", "compare.md", "compare.png"
EVAL_NOISE = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_num_tokens")
COLUMNS = (("trainable_params", "trainable params"), ("trainable_percent", "trainable %"),
           ("peak_memory_gb", "peak memory (GB)"), ("tokens_per_s", "tokens/s"), ("train_s", "train s"),
           ("wall_s", "wall s"), ("steps", "steps"), ("final_loss", "final train loss"), ("eval_loss", "eval loss"))


def numbers(run: Path) -> dict:
    """One finished run's numbers (see the module docstring for where each comes from)."""
    s = json.loads((run / "summary.json").read_text())
    rows = rep.read_metrics(run / run_dir.METRICS)
    measured = (s.get("memory") or {}).get("measured") or {}
    peak_bytes = measured.get("peak_bytes")
    peak = peak_bytes / 1e9 if peak_bytes else max((r["peak_mem_gb"] for r in rows if "peak_mem_gb" in r), default=None)
    evals = {k: v for k, v in (s.get("eval") or {}).items() if k.startswith("eval_") and k not in EVAL_NOISE}
    out = {"trainable_params": s["params"]["trainable"], "total_params": s["params"]["total"],
           "trainable_percent": _r(s["params"]["trainable_percent"], 4), "peak_memory_gb": _r(peak, 3),
           "peak_memory_source": measured.get("source"),
           "tokens_per_s": _r(throughput(rows), 0),
           "train_s": _r(s.get("train_seconds"), 1), "steps": s.get("global_step"),
           "final_loss": _r(s.get("final_loss"), 4), "eval_loss": _r(evals.pop("eval_loss", None), 4),
           "eval": {k.removeprefix("eval_"): _r(v, 4) for k, v in evals.items()}, "tasks": _tasks(run)}
    return out


def throughput(rows: list[dict]) -> float | None:
    """Tokens seen per second of training: the last logged step's tokens over its elapsed time, less the time
    spent in evaluations logged before it (one number for the run; the per-interval rate is noisy)."""
    train = [r for r in rows if r.get("tokens_seen") and r.get("elapsed_s")]
    if not train:
        return None
    last = train[-1]
    evals = sum(r.get("eval_runtime", 0.0) for r in rows if "eval_loss" in r and r["elapsed_s"] <= last["elapsed_s"])
    seconds = last["elapsed_s"] - evals
    return last["tokens_seen"] / seconds if seconds > 0 else None


def _r(x: Any, digits: int) -> Any:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return x
    return int(round(x)) if digits == 0 else round(float(x), digits)


def _tasks(run: Path) -> dict:
    """The tuned model's metrics per eval task (eval/report.json), when the run evaluated after training."""
    path = run / "eval" / "report.json"
    if not path.is_file():
        return {}
    tasks = json.loads(path.read_text()).get("tasks") or {}
    return {name: {m: _r(v, 4) for m, v in (t.get("tuned") or {}).items()} for name, t in tasks.items()}


def one_line(n: dict) -> str:
    parts = [f"final loss {n['final_loss']}", *([f"eval loss {n['eval_loss']}"] if n["eval_loss"] is not None else []),
             f"{n['trainable_params']:,} trainable", *([f"{n['tokens_per_s']:,} tokens/s"] if n["tokens_per_s"] else [])]
    return ", ".join(parts)


def start(recipe: Path, axes: list[Axis], common: list[str], steps: int | None, parent: Path,
          variants: list[Variant], command: str | None = None) -> dict:
    """The document, every variant `not run` yet (wall times of runs reused from an earlier compare are kept)."""
    earlier = {}
    if (parent / JSON).is_file():
        earlier = {v["name"]: v.get("wall_s") for v in json.loads((parent / JSON).read_text()).get("variants", [])}
    return {"recipe": str(recipe), "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "varied": {a.key: [i.text.split("=", 1)[1] for i in a.items] for a in axes}, "overrides": common,
            "steps": steps, "variants": [
                {"name": v.name, "dir": v.dir.name, "overrides": v.overrides, "left_out": v.left_out,
                 "status": "not run", "reason": None, "wall_s": earlier.get(v.name)} for v in variants]}


def update(doc: dict, v: Variant, result: dict, parent: Path) -> None:
    """Record a variant's result and rewrite compare.json, compare.md and (when it finished) compare.png."""
    entry = next(e for e in doc["variants"] if e["name"] == v.name)
    entry.update(status=result["status"], reason=result.get("reason"), reused=bool(result.get("reused")),
                 earlier=result.get("earlier"))
    if "wall_s" in result:
        entry["wall_s"] = result["wall_s"]
    if result["status"] == "finished":
        entry.update(numbers(v.dir))
        doc["plot"] = plot(doc, parent)
    run_dir.write_json(parent / JSON, doc)
    (parent / MD).write_text(markdown(doc), encoding="utf-8")


def markdown(doc: dict) -> str:
    varied = "; ".join(f"`{k}` = {', '.join(f'`{x}`' for x in vals)}" for k, vals in doc["varied"].items())
    fixed = ", ".join(f"`{o}`" for o in doc["overrides"]) or "none"
    lines = [f"# Compare: `{doc['recipe']}`", "", f"- varied: {varied} ({len(doc['variants'])} variants)",
             f"- the same for every variant: all that is not varied (the recipe's data, seed, batch ...), with the "
             f"overrides {fixed}",
             f"- created: {doc['created']}" + (f" by `{doc['command']}`" if doc.get("command") else ""),
             "- each variant's run dir (summary.json, metrics.jsonl, train.log) is next to this file, named as the variant"
             + (" (or as `dir` says, where the name had to change)" if any(v["dir"] != v["name"] for v in
                                                                             doc["variants"]) else ""),
             "", *table(doc["variants"]), ""]
    if doc.get("plot"):
        lines += [f"![loss curves]({doc['plot']})", ""]
    notes = [f"- `{v['name']}`: left out {', '.join(f'`{k}`' for k in v['left_out'])} (not options of this "
             "variant's method / trainer kind: its defaults apply)" for v in doc["variants"] if v["left_out"]]
    if notes:
        lines += ["## Left out", "", *notes, ""]
    earlier = [f"- `{v['name']}`: {v['earlier']}" for v in doc["variants"] if v.get("earlier")]
    if earlier:
        lines += ["## Earlier runs in the variants' dirs", "", *earlier, ""]
    bad = [v for v in doc["variants"] if v["status"] in ("failed", "invalid", "stopped")]
    if bad:
        lines += ["## Not finished", ""]
        for v in bad:
            where = f", log `{v['dir']}/train.log`" if v["status"] != "invalid" else " (not run)"
            lines += [f"- `{v['name']}`: {v['status']}{where}", "", "  ```", *(f"  {ln}" for ln in
                      (v["reason"] or "").splitlines()), "  ```", ""]
    lines += [f"Peak memory: {_memory_source(doc['variants'])}. tokens/s: tokens seen per second of training "
              "(evaluations excluded). train s: the trainer's time (summary.json); wall s: the whole `tunekit train` "
              "process (start, data, model, train, eval, save).", ""]
    return "\n".join(lines)


def table(variants: list[dict]) -> list[str]:
    evals = list(dict.fromkeys(k for v in variants for k in v.get("eval", {})))
    tasks = list(dict.fromkeys((t, m) for v in variants for t, ms in v.get("tasks", {}).items() for m in ms))
    dirs = any(v["dir"] != v["name"] for v in variants)  # a column only when a name had to change
    head = ["variant", *(["dir"] * dirs), "status", *(c[1] for c in COLUMNS), *(f"eval {k}" for k in evals),
            *(f"{t}: {m}" for t, m in tasks)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * (2 + dirs) + " ---: |" * (len(head) - 2 - dirs)]
    for v in variants:
        status = "finished (earlier run)" if v.get("reused") else v["status"]
        cells = [f"`{v['name']}`", *([f"`{v['dir']}`"] * dirs), status, *(rep.fmt(v.get(c[0])) for c in COLUMNS),
                 *(rep.fmt(v.get("eval", {}).get(k)) for k in evals),
                 *(rep.fmt(v.get("tasks", {}).get(t, {}).get(m)) for t, m in tasks)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _memory_source(variants: list[dict]) -> str:
    sources = sorted({v["peak_memory_source"] for v in variants if v.get("peak_memory_source")})
    return ", ".join(sources) if sources else "as summary.json measured it"


def plot(doc: dict, parent: Path) -> str | None:
    """Train loss of every finished variant overlaid; beside it the eval loss: curves when logged at several steps,
    else the final eval loss per variant as bars."""
    done = [v for v in doc["variants"] if v["status"] == "finished"]
    curves = [(v, *rep.loss_points(rep.read_metrics(parent / v["dir"] / run_dir.METRICS))) for v in done]
    curves = [(v, train, ev) for v, train, ev in curves if train]
    if not curves:
        return None
    plt = rep.pyplot()
    with_eval = any(v.get("eval_loss") is not None for v, _, _ in curves)
    fig, axes = plt.subplots(1, 2 if with_eval else 1, figsize=(11 if with_eval else 6.5, 4), squeeze=False)
    left = axes[0][0]
    for i, (v, train, _) in enumerate(curves):
        left.plot(*zip(*train), color=f"C{i % 10}", lw=1.3, label=v["name"])
    left.set(xlabel="step", ylabel="loss", title="train loss")
    left.legend(fontsize=7)
    if with_eval:
        _eval_panel(axes[0][1], curves)
    fig.tight_layout()
    fig.savefig(parent / PNG, dpi=80)
    plt.close(fig)
    return PNG


def _eval_panel(ax: Any, curves: list[tuple]) -> None:
    if any(len(ev) > 1 for _, _, ev in curves):
        for i, (v, _, ev) in enumerate(curves):
            if ev:
                ax.plot(*zip(*ev), "o-", color=f"C{i % 10}", label=v["name"])
        ax.set(xlabel="step", ylabel="loss", title="eval loss")
        return
    xs = range(len(curves))
    ax.bar(list(xs), [v.get("eval_loss") or 0.0 for v, _, _ in curves], color=[f"C{i % 10}" for i in xs])
    ax.set_xticks(list(xs), [v["name"] for v, _, _ in curves], rotation=20, ha="right", fontsize=7)
    ax.set(ylabel="loss", title="eval loss at the end")
