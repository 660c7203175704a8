"""The `tunekit` command line. Each command parses its arguments and calls into the package.

Heavy libraries (torch, transformers, ...) are imported inside the commands that need them, so
`tunekit --help`, `validate` and `recipes` stay fast.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from pathlib import Path

import typer

from tunekit import __version__
from tunekit.errors import RunStopped, UserError, did_you_mean
from tunekit.paths import create_dir, shipped_dir

app = typer.Typer(
    name="tunekit",
    help="Fine-tune language models from YAML recipes.\n\n"
    "Start with `tunekit recipes list`, copy one with `tunekit recipes copy quickstart my.yaml`, "
    "check it with `tunekit validate my.yaml`, then `tunekit train my.yaml`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
recipes_app = typer.Typer(help="Find, read and copy the recipes shipped with tunekit.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
methods_app = typer.Typer(help="List the training methods (`tunekit methods`) and their options (`methods show NAME`).")
app.add_typer(methods_app, name="methods")

_state = {"debug": False}

OVERRIDES_HELP = "Overrides as dotted KEY=VALUE, e.g. trainer.learning_rate=1e-4 output.dir=runs/try2"
DEBUG_HELP = "Show the full traceback on errors."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' own warnings, logs and progress bars."),
) -> None:
    _state["debug"] = debug or bool(os.environ.get("TUNEKIT_DEBUG"))
    from tunekit.quiet import quiet_libraries

    quiet_libraries(verbose)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in output.dir."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace output.dir, a run tunekit wrote (never a "
                                   "folder holding other files)."),
    allow_changes: bool = typer.Option(False, "--allow-changes", help="With --resume: continue although the recipe "
                                       "(beyond max_steps, logging, output, launch, eval) or the data files changed."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    nproc: int = typer.Option(None, "--nproc", help="Processes per node (launch.nproc).", show_default=False),
    nnodes: int = typer.Option(None, "--nnodes", help="Number of nodes (launch.nnodes).", show_default=False),
    node_rank: int = typer.Option(None, "--node-rank", help="This node's rank (launch.node_rank).", show_default=False),
    master_addr: str = typer.Option(None, "--master-addr", help="Node 0 address (launch.master_addr).",
                                    show_default=False),
    master_port: int = typer.Option(None, "--master-port", help="Node 0 port (launch.master_port).", show_default=False),
    strategy: str = typer.Option(None, "--strategy", help="ddp | deepspeed | fsdp (launch.strategy).", show_default=False),
) -> None:
    """Train: validate the recipe, prepare data, build model + method, run the trainer, write the run dir.

    \b
    Example: tunekit train recipes/quickstart.yaml trainer.max_steps=20 output.dir=runs/try
    Several processes: tunekit train RECIPE --nproc 8 (see docs/scaling.md).
    """
    _state["debug"] |= debug
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; choose one")
    if allow_changes and not resume:
        raise UserError("--allow-changes only applies to --resume")
    from tunekit.launch import relaunch
    from tunekit.recipe.load import load_recipe

    overrides = [*(overrides or []), *relaunch.flag_overrides(
        nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port,
        strategy=strategy)]
    r = load_recipe(recipe, overrides)
    from tunekit import disk

    with disk.guard(r):  # a full or read-only disk wherever the run writes: a clear error (exit 2)
        if relaunch.needs_relaunch(r.launch):
            if relaunch.prepare(r, resume=resume, overwrite=overwrite):
                return
            flags = ["--resume"] * resume + ["--overwrite"] * overwrite + ["--allow-changes"] * allow_changes + \
                ["--debug"] * _state["debug"]
            sys.exit(relaunch.relaunch(r.launch, ["train", str(recipe), *overrides, *flags]))
        from tunekit.pipeline import train as run_train

        run_train(r, resume=resume, overwrite=overwrite, allow_changes=allow_changes, until_exit=True)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    params: bool = typer.Option(False, "--params", help="Also count trainable/total parameters of the model and "
                                "method on the meta device (no weights loaded; imports torch)."),
    explain: bool = typer.Option(False, "--explain", help="Print each key's description as a comment beside it."),
) -> None:
    """Check a recipe (with overrides) and its data files' existence; print it resolved, every default filled
    in. Loads no model and no data."""
    _state["debug"] |= debug
    import yaml

    from tunekit.recipe.load import load_recipe

    r = load_recipe(recipe, overrides or [])
    from tunekit.data.sources import check_exists

    check_exists([*r.data.train, *r.data.eval])
    from tunekit.model.load import check_local

    check_local(r.model.path)
    check_local(getattr(r.trainer, "ref_model", None), "trainer.ref_model")
    from tunekit.data.templates import check_choice

    check_choice(r.data.chat_template, r.data.chat_template_kwargs)
    if explain:
        from tunekit.recipe.reference import commented_yaml

        typer.echo(commented_yaml(r), nl=False)
    else:
        typer.echo(yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False, allow_unicode=True), nl=False)
    typer.echo(f"# {recipe}: valid", err=True)
    if params:
        from tunekit.methods.registry import count_without_weights

        c = count_without_weights(r)
        typer.echo(f"# params ({r.method.name} on {r.model.path}): trainable {c['trainable']:,} of total "
                   f"{c['total']:,} ({c['trainable_percent']:.4f}%)")


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    gpu: str = typer.Option(None, "--gpu", help="GPU name: A100-40, A100-80, H100, H200, L40S, RTX-4090, ... "
                            "(default A100-80).", show_default=False),
    gpu_memory: float = typer.Option(None, "--gpu-memory", help="GPU memory in GiB (with --gpu: that GPU's FLOP/s, "
                                     "this memory).", show_default=False),
    nproc: int = typer.Option(None, "--nproc", min=1, help="Processes (GPUs) per node (launch.nproc).",
                              show_default=False),
    no_data: bool = typer.Option(False, "--no-data", help="Skip the data plan (no tokenisation)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Memory per device, fit, data and time for a recipe before anything loads (the model is built on the meta
    device; see docs/plan.md).

    \b
    Example: tunekit plan recipes/quickstart.yaml --gpu RTX-4090
             tunekit plan my.yaml --gpu H100 --nproc 8 launch.strategy=deepspeed --json
    """
    _state["debug"] |= debug
    import json

    from tunekit.plan import hardware
    from tunekit.plan.report import plan as make_plan
    from tunekit.plan.report import render
    from tunekit.recipe.load import load_recipe

    if gpu_memory is not None and not (0 < gpu_memory < math.inf):
        raise UserError(f"--gpu-memory: {gpu_memory:g} is not a memory size; give the GPU's memory in GiB (> 0)")
    r = load_recipe(recipe, [*(overrides or []), *([f"launch.nproc={nproc}"] if nproc is not None else [])])
    named = hardware.gpu(gpu) if gpu else None
    target = hardware.custom(gpu_memory, named) if gpu_memory is not None else named or \
        hardware.gpu(hardware.DEFAULT_GPU)
    result = make_plan(r, target, with_data=not no_data)
    typer.echo(json.dumps(result, indent=2) if as_json else render(result), nl=False)


@app.command()
def compare(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP + " (the same for every variant)",
                                          show_default=False),
    vary: list[str] = typer.Option(..., "--vary", help="KEY=V1,V2,...: values of one recipe key; repeat for a grid "
                                   "(every combination). A value may carry more overrides after `+`, e.g. "
                                   "method.name=lora,lora+method.r=64,ia3.", show_default=False),
    steps: int = typer.Option(None, "--steps", min=1, help="trainer.max_steps of every variant.", show_default=False),
    out: Path = typer.Option(None, "--out", help="Parent dir of the variants' run dirs and the comparison "
                             "(default: runs/compare-<recipe name>).", show_default=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="Train a variant again when its dir holds a run of "
                                   "another recipe (default: refuse)."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Train variants of a recipe on the same data, seed and steps; compare them in compare.md / .json / .png.

    Each variant is a `tunekit train` process with its own run dir under --out (its output in train.log there).
    Rerunning skips finished variants and resumes unfinished ones. See docs/plan.md (compare).

    \b
    Example: tunekit compare recipes/quickstart.yaml --vary method.name=lora,dora,ia3,loreft --steps 40
    """
    _state["debug"] |= debug
    import shlex

    from tunekit.compare.run import compare as run_compare

    code = run_compare(recipe, vary, overrides or [], steps, out, overwrite, _state["debug"],
                       shlex.join(["tunekit", *sys.argv[1:]]))
    raise typer.Exit(code)


@app.command()
def preprocess(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    show: int = typer.Option(0, "--show", min=0, help="Print N tokenized examples with trained text marked."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Run the data stage only: tokenize, mask, pack, write the cache and print statistics (see docs/data.md)."""
    _state["debug"] |= debug
    from tunekit.recipe.load import load_recipe

    r = load_recipe(recipe, overrides or [])
    from tunekit import disk
    from tunekit.data.preview import preprocess as run_preprocess

    with disk.guard(r):  # a full or read-only cache dir: a clear error
        run_preprocess(r, show=show)


@app.command("eval")
def eval_(
    target: str = typer.Argument(..., help="A run directory, a model directory or hub id, or a recipe (.yaml)."),
    task: list[str] = typer.Option(None, "--task", help="Shipped task (quickstart-loss, quickstart-arith, "
                                   "quickstart-choice) or lm_eval:NAME; repeatable. Default: the recipe's eval tasks."),
    out: Path = typer.Option(None, "--out", help="Report directory (default: RUN/eval for a run directory)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report instead of writing eval-2/."),
    no_base: bool = typer.Option(False, "--no-base", help="Skip evaluating the base model."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Examples per forward pass / generate call."),
    max_examples: int = typer.Option(None, "--max-examples", min=1, help="Use at most N examples of each task."),
    task_file: Path = typer.Option(None, "--task-file", help="Your own task: a JSONL file (see --kind).",
                                   show_default=False),
    kind: str = typer.Option(None, "--kind", help="With --task-file: generation ({prompt, answer} rows, scored by "
                             "--metric; the default), choice ({prompt, choices, answer}) or loss (chat `messages` rows).",
                             show_default=False),
    data_format: str = typer.Option(None, "--format", help="With --task-file: row format if not the kind's default "
                                    "(qa, choice, messages, prompt_completion).", show_default=False),
    metric: list[str] = typer.Option(None, "--metric", help="With --kind generation: exact_match (default), "
                                     "numeric_match, contains, regex, token_f1, rouge_l, tool_call_format, "
                                     "tool_call_name, tool_call_match; repeatable."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Evaluate a run (tuned vs base) or a model; write report.json, report.md and PNG plots.

    With no --task/--task-file: the recipe's eval tasks, else loss on the run's eval split.

    \b
    Examples: tunekit eval runs/quickstart --task quickstart-arith --task quickstart-choice
              tunekit eval runs/quickstart --task-file my_questions.jsonl --kind generation --metric numeric_match
    """
    _state["debug"] |= debug
    from tunekit.eval.run import evaluate, file_task

    if not task_file and (kind or data_format or metric):
        flags = ", ".join(f for f, v in (("--kind", kind), ("--format", data_format), ("--metric", metric)) if v)
        raise UserError(f"{flags}: describe(s) a --task-file; give --task-file FILE, or leave them out to run the "
                        "recipe's tasks")
    extra = [file_task(task_file, kind or "generation", data_format, metric)] if task_file else []
    evaluate(target, task or [], out, overwrite, False if no_base else None, batch_size, max_examples, extra)


@app.command()
def merge(
    inputs: list[str] = typer.Argument(..., help="Run directories, adapter directories or full model directories."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged model (must not exist or be empty); "
                             "written as OUT.partial-PID next to it and renamed when complete."),
    method: str = typer.Option(None, "--method", help="With several inputs: linear (default), soup, greedy_soup, "
                               "task_arithmetic, ties, dare_linear, dare_ties, magnitude_prune, breadcrumbs, model_stock."),
    weights: str = typer.Option(None, "--weights", help="Comma-separated weight per input, e.g. 0.7,0.3 (not "
                                "greedy_soup, model_stock)."),
    density: float = typer.Option(0.5, "--density", help="Fraction of each delta kept, in (0, 1] (ties, dare_*, "
                                  "magnitude_prune, breadcrumbs)."),
    scale: float = typer.Option(1.0, "--scale", help="Scaling of the summed task vectors, lambda (task_arithmetic, "
                                "ties, dare_*, magnitude_prune, breadcrumbs; the averaging methods take none)."),
    base: str = typer.Option(None, "--base", help="Base model of a multi-input merge (default: from the inputs' "
                             "recipes / adapter configs)."),
    eval_data: str = typer.Option(None, "--eval-data", help="Held-out JSONL (messages) for greedy_soup."),
    dtype: str = typer.Option("float32", "--dtype", help="Dtype of the merged weights: float32, bfloat16, float16."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest allowed logit difference, >= 0 (adapter "
                                    "merge)."),
    seed: int = typer.Option(0, "--seed", help="Seed for DARE's random drops (dare_linear, dare_ties)."),
    outliers: float = typer.Option(0.01, "--outliers", help="breadcrumbs: fraction of largest deltas dropped, in "
                                   "[0, 1), with --outliers + --density <= 1."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Merge an adapter into its base model, or merge several models / adapters with the same base.

    An option the chosen method does not use is refused. LoReFT/LoFiT/bottleneck and virtual-token (prompt,
    prefix, p-tuning) runs cannot be merged: use them attached. Several inputs must share the tokenizer and
    chat template. See docs/eval-merge.md.

    \b
    Examples: tunekit merge runs/quickstart --out merged/
              tunekit merge runs/a runs/b --method ties --density 0.3 --out merged-ties/
    """
    _state["debug"] |= debug
    from tunekit.merge.run import merge_cli

    merge_cli(inputs, out, method, weights, density, scale, base, eval_data, dtype, tolerance, seed, outliers)


def _positive(value: float) -> float:
    if value <= 0:
        raise typer.BadParameter(f"{value} is not > 0 (1 means no penalty)")
    return value


@app.command()
def chat(
    target: str = typer.Argument(..., help="A run directory, a model directory or a hub id."),
    prompt: str = typer.Option(None, "--prompt", help="Answer this one message and exit (for scripts).",
                               show_default=False),
    system: str = typer.Option(None, "--system", help="System prompt.", show_default=False),
    tools: str = typer.Option(None, "--tools", help="A JSON/YAML file of tool schemas for the chat template "
                              "(default: a run's own training tools, if its data had a `tools:` file).",
                              show_default=False),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Tokens generated per reply at most."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="0: greedy decoding."),
    top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", callback=_positive,
                                             help="Must be > 0; 1: none, > 1 discourages repeats."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Chat with a trained model using the chat template it trained with; replies stream to stdout.

    In the chat: /reset, /system TEXT, /exit.

    \b
    Example: tunekit chat runs/quickstart --prompt "What is 2 plus 3?"
    """
    _state["debug"] |= debug
    from tunekit import chat as chat_mod

    settings = chat_mod.Generation(max_new_tokens, temperature, top_p, repetition_penalty, seed)
    chat_mod.run(chat_mod.load_session(target, settings, system, tools), prompt)


@app.command("explain")
def explain_(key: str = typer.Argument(..., help="A dotted recipe key, e.g. trainer.lr_scheduler, method.r, data.train, "
                                       "or a section name.")) -> None:
    """Explain a recipe key: description, type, default, allowed values, and which trainer kinds / methods have it.

    The full reference is docs/reference.md.

    \b
    Example: tunekit explain trainer.lr_scheduler
    """
    from tunekit.recipe.reference import explain

    typer.echo(explain(key), nl=False)


@app.command("init")
def init_(
    out: Path = typer.Argument(..., help="The recipe file to write, e.g. my.yaml."),
    model: str = typer.Option(..., "--model", help="Model: a hub id (Qwen/Qwen2.5-0.5B-Instruct), a local model "
                              "directory, or builtin:small-llama to try things offline."),
    data: str = typer.Option(..., "--data", help="Training data: a .jsonl/.json/.csv/.parquet file, a glob, "
                             "builtin:NAME/FILE or hub:ORG/NAME."),
    fmt: str = typer.Option(None, "--format", help="Data format (messages, sharegpt, alpaca, prompt_completion, "
                            "text, preference, unpaired_preference, prompt_answer); default: read from the first row.",
                            show_default=False),
    method: str = typer.Option("lora", "--method", help="Training method (`tunekit methods` lists them)."),
    kind: str = typer.Option(None, "--trainer", help="Trainer kind (sft, dpo, kto, orpo, cpo, reft); default: "
                             "from the data format.", show_default=False),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Write a commented starter recipe, validated (data file included) before it is written.

    \b
    Example: tunekit init my.yaml --model Qwen/Qwen2.5-0.5B-Instruct --data chats.jsonl
    Then: tunekit validate my.yaml --explain (every key with its default) and tunekit train my.yaml.
    """
    from tunekit.starter import init_recipe

    r = init_recipe(out, model, data, fmt, method, kind, force)
    typer.echo(f"wrote {out}: {r.trainer.kind} with method {r.method.name} on {r.model.path}, data "
               f"{r.data.train[0].path} ({r.data.train[0].format}). Next: tunekit train {out}", err=True)


# ------------------------------------------------------------------------------------------------ recipes


def _recipe_path(name: str) -> Path:
    d = shipped_dir("recipes")
    path = d / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.exists():
        names = sorted(p.stem for p in d.glob("*.yaml"))
        raise UserError(f"no shipped recipe `{name}`.{did_you_mean(name, names)} Available: {', '.join(names)}")
    return path


def _summary_line(path: Path) -> str:
    """The recipe's first comment sentence (it may run over several comment lines)."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("# ").strip())
        if words[-1].endswith("."):
            break
    return " ".join(words)


@recipes_app.command("list")
def recipes_list() -> None:
    """List the shipped recipes with their one-line description."""
    paths = sorted(shipped_dir("recipes").glob("*.yaml"))
    width = max(len(p.stem) for p in paths)
    for p in paths:
        typer.echo(f"{p.stem:<{width}}  {_summary_line(p)}")


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="Recipe name, e.g. quickstart.")) -> None:
    """Print a shipped recipe."""
    typer.echo(_recipe_path(name).read_text(encoding="utf-8"), nl=False)


@recipes_app.command("copy")
def recipes_copy(
    name: str = typer.Argument(..., help="Recipe name, e.g. quickstart."),
    dest: str = typer.Argument(..., help="Destination .yaml file, or a directory (made if DEST ends in /) to copy "
                               "NAME.yaml into."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing destination file."),
) -> None:
    """Copy a shipped recipe to DEST so you can edit it."""
    src = _recipe_path(name)
    into_dir = Path(dest).is_dir() or dest.endswith(("/", os.sep))  # Path("newdir/") drops the slash
    target = Path(dest) / src.name if into_dir else Path(dest)
    if target.suffix not in (".yaml", ".yml"):
        raise UserError(f"{dest}: give the copy a .yaml file name, or a directory ending in / to copy {src.name} into")
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it")
    create_dir(target.parent, "DEST")
    try:
        shutil.copyfile(src, target)
    except OSError as e:
        raise UserError(f"DEST {target}: cannot write the file ({e.strerror or e})") from None
    typer.echo(f"copied {src.stem} -> {target}")


# ------------------------------------------------------------------------------------------------ methods


@methods_app.callback(invoke_without_command=True)
def methods_list(ctx: typer.Context) -> None:
    """List every method (`method.name`) with one line each; excluded peft tuners say why."""
    if ctx.invoked_subcommand is not None:
        return
    from tunekit.methods.catalogue import method_rows

    rows = method_rows()
    width = max(len(r[0]) for r in rows)
    for name, source, line in rows:
        typer.echo(f"{name:<{width}}  {source:<7}  {line}")


@methods_app.command("show")
def methods_show(name: str = typer.Argument(..., help="Method name, e.g. lora, ia3, lisa.")) -> None:
    """Print a method's options with their types, defaults and descriptions."""
    from tunekit.methods.catalogue import show

    typer.echo(show(name), nl=False)


# ------------------------------------------------------------------------------------------------ entry point


def _usage_errors() -> tuple[type, ...]:
    """The exceptions that mean "bad command line": typer >= 0.2x vendors click (`TyperException`), older
    typer raises click's own `ClickException`. Both carry `exit_code` (2 for usage errors) and `show()`."""
    kinds: list[type] = [t for t in (getattr(typer, "TyperException", None),) if t is not None]
    try:
        import click

        kinds.append(click.exceptions.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(kinds)


def _aborts() -> tuple[type, ...]:
    kinds: list[type] = [typer.Abort]
    try:
        import click

        kinds.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def main() -> None:
    """Run the app. Usage errors (unknown command or option, a missing argument, a bad value, bare `tunekit`)
    print click's usage message and exit 2; a UserError prints `error: ...` and exits 2; no traceback unless
    `--debug`. Bare `tunekit` prints the help (to stderr) and exits 2, as click does for a group with no command.
    """
    debug = "--debug" in sys.argv or bool(os.environ.get("TUNEKIT_DEBUG"))
    try:
        code = _run_app(debug)
    except SystemExit as e:  # sys.exit inside a command (the relaunched run's exit code)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            typer.echo(str(e.code), err=True)
    _exit(code)


def _run_app(debug: bool) -> int:
    try:
        rc = app(standalone_mode=False)
    except UserError as e:
        if debug or _state["debug"]:
            raise
        from tunekit.launch.runtime import rank_prefix

        typer.echo(f"{rank_prefix()}error: {e}", err=True)
        return e.exit_code
    except RunStopped as e:
        if str(e):  # empty on the other ranks of a run that stopped together: rank 0 says it
            typer.echo(str(e), err=True)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except _usage_errors() as e:
        e.show()  # type: ignore[attr-defined]
        return getattr(e, "exit_code", 2) or 2
    except _aborts():
        return 1
    return rc if isinstance(rc, int) else 0  # non-standalone click returns the code of typer.Exit(code)


def _exit(code: int) -> None:
    """Exit with `code`. One rank of a multi-process run skips interpreter teardown once its work is done, after
    the atexit handlers ran: C++ threads that gloo, DeepSpeed or the launcher's store still hold at static
    destruction can abort the process there ("terminate called without an active exception", SIGABRT), which
    turned finished 2-process runs into failed ones. Files the run wrote are closed by then; stdio and logging
    are flushed. A `tunekit train` that completed does the same: its signal handlers stay until the process ends
    (guards.signal_handlers), but Python's teardown (1-2 s with torch loaded) runs with the default ones, and a
    SIGTERM there ended the process with 143 and no word."""
    guards = sys.modules.get("tunekit.guards")  # imported only by `train`
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or (guards is not None and guards.SIGNALS.phase == "exiting"):
        import atexit
        import logging

        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()  # Python-level exit work still runs (trackers finishing their runs, ...)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
