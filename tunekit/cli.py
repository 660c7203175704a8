"""The `tunekit` command line. Each command parses its arguments and calls into the package.

Heavy libraries (torch, transformers, ...) are imported inside the commands that need them, so
`tunekit --help`, `validate` and `recipes` stay fast.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import typer

from tunekit import __version__
from tunekit.errors import UserError

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
) -> None:
    _state["debug"] = debug or bool(os.environ.get("TUNEKIT_DEBUG"))


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in output.dir."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output.dir."),
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

    Example: tunekit train recipes/quickstart.yaml trainer.max_steps=20 output.dir=runs/try
    Several processes: tunekit train RECIPE --nproc 8 (see docs/scaling.md).
    """
    _state["debug"] |= debug
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; choose one")
    from tunekit import launch
    from tunekit.recipe.load import load_recipe

    overrides = [*(overrides or []), *launch.flag_overrides(
        nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port,
        strategy=strategy)]
    r = load_recipe(recipe, overrides)
    if launch.needs_relaunch(r):
        launch.check_runnable(r)
        if r.launch.node_rank == 0:  # refuse a non-empty output.dir or a bad resume before starting workers
            from tunekit.output import latest_checkpoint, prepare_run_dir

            prepare_run_dir(Path(r.output.dir), resume=resume, overwrite=overwrite or r.output.overwrite)
            if resume:
                launch.check_resume(r, latest_checkpoint(Path(r.output.dir)), r.launch.world_size)
        flags = ["--resume"] * resume + ["--overwrite"] * overwrite + ["--debug"] * _state["debug"]
        sys.exit(launch.relaunch(r, ["train", str(recipe), *overrides, *flags]))
    from tunekit.pipeline import train as run_train

    run_train(r, resume=resume, overwrite=overwrite)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Check a recipe (with overrides) and print it resolved, every default filled in. Loads no model."""
    _state["debug"] |= debug
    import yaml

    from tunekit.recipe.load import load_recipe

    r = load_recipe(recipe, overrides or [])
    typer.echo(yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False), nl=False)
    typer.echo(f"# {recipe}: valid", err=True)


# ------------------------------------------------------------------------------------------------ recipes


def shipped_dir(kind: str) -> Path:
    """Shipped recipes/configs: inside the installed wheel, or at the repo root for an editable install."""
    pkg = Path(__file__).resolve().parent
    for candidate in (pkg / "_shipped" / kind, pkg.parent / kind):
        if candidate.is_dir():
            return candidate
    raise UserError(f"cannot find the shipped {kind}/ folder; reinstall tunekit")


def _recipe_path(name: str) -> Path:
    d = shipped_dir("recipes")
    path = d / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.exists():
        import difflib

        names = sorted(p.stem for p in d.glob("*.yaml"))
        guess = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean `{guess[0]}`?" if guess else ""
        raise UserError(f"no shipped recipe `{name}`.{hint} Available: {', '.join(names)}")
    return path


def _summary_line(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


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
    dest: Path = typer.Argument(..., help="Destination file or directory."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing destination file."),
) -> None:
    """Copy a shipped recipe to DEST so you can edit it."""
    src = _recipe_path(name)
    target = dest / src.name if dest.is_dir() else dest
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    typer.echo(f"copied {src.stem} -> {target}")


# ------------------------------------------------------------------------------------------------ entry point


def main() -> None:
    debug = "--debug" in sys.argv or bool(os.environ.get("TUNEKIT_DEBUG"))
    try:
        app(standalone_mode=False)
    except UserError as e:
        if debug or _state["debug"]:
            raise
        from tunekit.launch import rank_prefix

        typer.echo(f"{rank_prefix()}error: {e}", err=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
