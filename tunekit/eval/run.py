"""`tunekit eval TARGET`: choose tasks, evaluate the tuned model (and its base), write the report."""

from __future__ import annotations

import gc
import importlib.util
import json
import re
import time
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tunekit import run_dir as rd
from tunekit.errors import UserError, did_you_mean
from tunekit.eval import report as rep
from tunekit.eval.schema import EvalTask, TaskData
from tunekit.eval.tasks import RUNNERS, check_run_data, read_examples, shipped_task
from tunekit.files import file_sha256
from tunekit.model_card import write_card
from tunekit.paths import create_dir
from tunekit.targets import Target, load_base, load_tokenizer_for, load_tuned, resolve_target
from tunekit.ui import console

TASK_FILE_KINDS = {"generation": ("generate", "qa"), "choice": ("multiple_choice", "choice"), "loss": ("loss", "messages")}


def file_task(path: Path, kind: str, data_format: str | None = None, metrics: list[str] | None = None) -> EvalTask:
    """An eval task from a JSONL file named on the command line (`tunekit eval RUN --task-file F --kind K`)."""
    if kind not in TASK_FILE_KINDS:
        raise UserError(f"--kind: `{kind}` is not a task kind.{did_you_mean(kind, TASK_FILE_KINDS)} "
                        f"Choose one of {', '.join(TASK_FILE_KINDS)}")
    if not Path(path).is_file():
        raise UserError(f"--task-file: `{path}` is not a file")
    task_kind, default_format = TASK_FILE_KINDS[kind]
    fields = {"name": Path(path).stem, "kind": task_kind,
              "data": {"path": str(path), "format": data_format or default_format}}
    try:
        return EvalTask.model_validate({**fields, **({"metrics": metrics} if metrics else {})})
    except ValidationError as e:
        raise UserError(f"--task-file {path}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None


def choose_tasks(target: Any, names: list[str], extra: list[EvalTask] | None = None) -> list[EvalTask]:
    if names or extra:
        return [shipped_task(n) for n in names] + list(extra or [])
    recipe = target.recipe
    if recipe is not None and recipe.eval.tasks:
        console.print(f"tasks: the recipe's eval.tasks ({', '.join(t.name for t in recipe.eval.tasks)})")
        return list(recipe.eval.tasks)
    if recipe is not None and recipe.data.eval:
        tasks = [heldout_task(s, "" if len(recipe.data.eval) == 1 else f"-{i + 1}")
                 for i, s in enumerate(recipe.data.eval)]  # a format no task reads is refused before anything is said
        check_run_data(recipe, target.run_dir)
        answers = all(s.format == "prompt_answer" for s in recipe.data.eval)
        console.print(f"tasks: none given; {'answers (numeric match)' if answers else 'loss and perplexity'} on the "
                      f"run's eval split (data.eval: {', '.join(s.path for s in recipe.data.eval)})")
        return tasks
    if recipe is not None and recipe.data.eval_fraction:
        console.print(f"tasks: none given; loss and perplexity on the run's hold-out (data.eval_fraction "
                      f"{recipe.data.eval_fraction:g} of the training rows, rebuilt by the data stage)")
        return [EvalTask(name="heldout-loss", kind="heldout_loss")]
    raise UserError(f"{target.label}: no eval tasks: the recipe has no `eval.tasks` and no `data.eval`; name tasks "
                    "with --task (e.g. --task quickstart-arith), --task-file FILE --kind generation|choice|loss, "
                    "or add an eval: section")


def heldout_task(source: Any, suffix: str) -> EvalTask:
    """The default task on one data.eval source: loss and perplexity; for `prompt_answer` (reft) questions, the
    generated answer scored by numeric match (what the RL stage's reward checks)."""
    if source.format == "prompt_answer":
        columns = {"prompt": source.columns.get("question", "question"), "answer": source.columns.get("answer", "answer")}
        return EvalTask(name=f"heldout-answers{suffix}", kind="generate", metrics=["numeric_match"],
                        data=TaskData(path=source.path, format="qa", columns=columns))
    if source.format not in typing.get_args(TaskData.model_fields["format"].annotation):
        raise UserError(f"data.eval: format {source.format} has no default eval task; name tasks with --task, "
                        "--task-file FILE --kind generation|choice|loss, or add an eval: section")
    return EvalTask(name=f"heldout-loss{suffix}", kind="loss",
                    data=TaskData(path=source.path, format=source.format, columns=source.columns))


def report_dir(out: Path, overwrite: bool) -> Path:
    """`out`, or the first free `out-2`, `out-3`, ... when `out` already holds a report (never overwrite silently)."""
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a directory for the report (report.json, report.md, plots)")
    if overwrite or not (out / "report.json").exists():
        return out
    i = 2
    while (out.with_name(f"{out.name}-{i}") / "report.json").exists():
        i += 1
    fresh = out.with_name(f"{out.name}-{i}")
    console.print(f"{out / 'report.json'} exists; writing this report to {fresh} (pass --overwrite to replace it)",
                  soft_wrap=True)
    return fresh


def default_out(target: Any) -> Path:
    if target.run_dir is not None:
        return target.run_dir / "eval"
    return Path("eval-reports") / (re.sub(r"[^A-Za-z0-9._-]+", "_", Path(target.label).stem or target.label) or "model")


def say_which_weights(target: Target) -> None:
    """A run without final/ (or one that did not finish) is evaluated at its latest complete checkpoint: say which,
    and which newer ones were incomplete (torn) and passed over (`targets.run_weights`)."""
    if target.note:
        console.print(f"weights: {target.weights} ({target.note})")


def run_tasks(model: Any, tokenizer: Any, tasks: list[EvalTask], ctx: dict) -> dict[str, dict]:
    model.eval()
    return {t.name: RUNNERS[t.kind](t, model, tokenizer, ctx) for t in tasks}


def check_tasks(tasks: list[EvalTask]) -> None:
    """Check every task first: bad data or a missing lm-eval fails before any model loads."""
    for t in tasks:
        if t.kind == "heldout_loss":
            continue  # checked when it runs: it needs the run's recipe
        if t.kind != "lm_eval":
            read_examples(t)
        elif importlib.util.find_spec("lm_eval") is None:
            raise UserError(f"eval task `{t.name}`: kind lm_eval needs lm-evaluation-harness, which is not "
                            "installed: pip install lm-eval")


def task_files(tasks: list[EvalTask]) -> dict[str, dict]:
    """Each task's data file with its sha256: the report says which examples were scored."""
    from tunekit.data.sources import resolve_path

    files = {}
    for t in tasks:
        if t.data is not None:
            path = resolve_path(t.data.path)
            files[t.name] = {"path": str(path.resolve()), "sha256": file_sha256(path)}
    return files


def training_record(target: Target) -> dict | None:
    """What the run's summary.json says about training (steps, time, losses), for the report."""
    if target.run_dir is None or not (target.run_dir / "summary.json").is_file():
        return None
    s = json.loads((target.run_dir / "summary.json").read_text())
    training = {k: s[k] for k in ("global_step", "train_seconds", "train_loss_mean", "final_loss") if k in s}
    training.update({k: v for k, v in (s.get("eval") or {}).items() if k == "eval_loss"})
    return training


def write_report(out: Path, report: dict, run: Path | None, shown: int) -> dict:
    """report.json, report.md and the plots (training curves of a run, metrics tuned vs base)."""
    out.mkdir(parents=True, exist_ok=True)
    if run is not None:
        report["plots"].append(rep.plot_training(run / "metrics.jsonl", out))
    report["plots"].append(rep.plot_metrics(report, out))
    report["plots"] = [p for p in report["plots"] if p]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(rep.markdown(report, shown), encoding="utf-8")
    return report


def evaluate(target_path: str | Path, task_names: list[str] | None = None, out: Path | None = None,
             overwrite: bool = False, compare_base: bool | None = None, batch_size: int | None = None,
             max_examples: int | None = None, extra_tasks: list[EvalTask] | None = None) -> Path:
    """`extra_tasks`: tasks built outside the recipe (`--task-file`), run with the named shipped ones."""
    start = time.perf_counter()
    target = resolve_target(target_path)
    tasks = choose_tasks(target, task_names or [], extra_tasks)
    if max_examples:
        tasks = [t.model_copy(update={"max_examples": min(t.max_examples or max_examples, max_examples)})
                 for t in tasks]
    check_tasks(tasks)
    cfg = target.recipe.eval if target.recipe is not None else None
    compare = compare_base if compare_base is not None else (cfg.compare_base if cfg else True)
    compare = compare and (target.kind == "adapter" or target.run_dir is not None)
    ctx = {"max_length": target.recipe.data.max_length if target.recipe else 1024,
           "train_on": target.recipe.data.train_on if target.recipe else "assistant",
           "batch_size": batch_size or (cfg.batch_size if cfg else 8), "recipe": target.recipe,
           "run_dir": target.run_dir, "cache": {}}
    out = create_dir(report_dir(out or default_out(target), overwrite), "--out")  # before any task runs

    tokenizer = load_tokenizer_for(target)
    console.rule(f"[bold]tunekit eval[/] {target.label} -> {out}")
    say_which_weights(target)
    tuned = run_tasks(load_tuned(target), tokenizer, tasks, {**ctx, "which": "tuned"})
    gc.collect()
    base = run_tasks(load_base(target), tokenizer, tasks, {**ctx, "which": "base"}) if compare else {}
    results = {t.name: {"kind": t.kind, "tuned": tuned[t.name], "base": base.get(t.name)} for t in tasks}

    meta = {"target": str(target.label), "model": target.weights, "base_model": target.model_cfg.path,
            "run_dir": str(target.run_dir) if target.run_dir else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - start, 1), "task_data": task_files(tasks), "plots": []}
    report = write_report(out, rep.build(meta, results, training_record(target)), target.run_dir,
                          cfg.num_examples_shown if cfg else 3)
    for name, t in report["tasks"].items():
        line = ", ".join(f"{m} {v:.4g}" + (f" (base {t['base'][m]:.4g})" if t["base"] else "")
                         for m, v in t["tuned"].items() if m != "tokens")
        console.print(f"{name}: {line}")
    console.print(f"report: {out / 'report.md'}")
    if (target.run_dir is not None and target.recipe is not None and out == target.run_dir / "eval"
            and (target.run_dir / rd.FINAL).is_dir()):
        write_card(target.run_dir, target.recipe)  # the card shows the new results (an unfinished run has none)
    return out
