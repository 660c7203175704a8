"""`tunekit compare`: validate the grid, then train each variant in its own `tunekit train` process, then report.

Each variant runs as a subprocess (`python -m tunekit train RECIPE OVERRIDES... output.dir=VARIANT_DIR`) rather than
in this process: a variant that crashes, runs out of memory or is killed takes only itself down; every variant
starts with clean memory (no allocator cache, no peak carried over from the previous one, so peak memory is its
own), the same seeding and the same code path as a plain `tunekit train`, including its relaunch under torchrun
when the launch section asks for several processes. Its console output goes to VARIANT_DIR/train.log.

Rerunning the same command skips a variant whose dir holds a finished run (summary.json) of the same resolved
recipe, resumes one with a checkpoint (`--resume`), and restarts one that stopped before its first checkpoint. A
dir holding a run of another recipe is refused before anything runs unless --overwrite; so is one of another
length (`--steps`): the learning-rate schedule is built for trainer.max_steps, so the steps it already took followed
another schedule than the other variants' and the comparison would not be like for like. compare.md says which
variants reused, resumed or retrained an earlier run.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tunekit import checkpoints, run_dir
from tunekit.compare import check, grid, report
from tunekit.compare.grid import Variant
from tunekit.errors import RunStopped, UserError
from tunekit.paths import create_dir
from tunekit.ui import console

STOPPED = (130, 143)  # tunekit train's exit codes after SIGINT / SIGTERM
HOW = {"resume": " (resuming from its checkpoint)", "overwrite": " (again from step 0: --overwrite)",
       "again": " (again from step 0: the earlier run left no checkpoint)"}
ERROR_LINE = re.compile(r"^(?:rank \d+/\d+: )?error: ")
LENGTH = "trainer.max_steps"  # may change on a plain --resume, but compare does not resume a run to another length


def compare(recipe: Path, vary: list[str], overrides: list[str], steps: int | None = None, out: Path | None = None,
            overwrite: bool = False, debug: bool = False, command: str | None = None) -> int:
    """Run the grid; returns the exit code: 0 when at least one variant finished, else 1."""
    axes = [grid.parse_vary(v) for v in vary]
    grid.check_axes(axes, overrides, steps)
    common = [*overrides, *([f"trainer.max_steps={steps}"] if steps is not None else [])]
    variants = grid.expand(axes)
    check.validate_all(recipe, common, variants)
    check.check_usable(variants, axes, common, steps)
    parent = out or Path("runs") / f"compare-{recipe.stem}"
    grid.name_variants(variants, parent)
    actions = {v.name: action(v, overwrite, steps) for v in variants if v.recipe is not None}
    create_dir(parent, "--out")
    doc = report.start(recipe, axes, common, steps, parent, variants, command)
    invalid = sum(v.recipe is None for v in variants)
    say(f"compare: {len(variants)} variant{'s' * (len(variants) != 1)} of {recipe}"
        + (f", {steps} steps each" if steps else "") + f" -> {parent}"
        + (f" ({invalid} not a valid recipe, listed)" if invalid else ""))
    for i, v in enumerate(variants, 1):
        result = run_one(v, actions.get(v.name), recipe, common, f"[{i}/{len(variants)}] {v.name}", debug)
        report.update(doc, v, result, parent)
        if result["status"] == "stopped":
            raise RunStopped(f"compare stopped during {v.name}; run the same command again to go on (finished "
                             "variants are skipped, this one resumes)", result["exit_code"])
    return summarise(doc, parent)


def say(text: str) -> None:
    """A console line, printed as it is (variant names and errors hold `[...]`, which is not rich markup here)."""
    console.print(text, markup=False)


def action(v: Variant, overwrite: bool, steps: int | None = None) -> str:
    """What to do with a variant's dir: skip, fresh, resume, again (no checkpoint to resume from) or overwrite; a
    dir holding a run of another recipe or length is refused (UserError) unless `overwrite`."""
    d = v.dir
    if not d.exists() or not any(d.iterdir()):
        return "fresh"
    if not (d / run_dir.MARKER).is_file():
        raise UserError(f"`{d}` is not empty and was not made by tunekit (no {run_dir.MARKER}); move it or choose "
                        "another --out")
    changes = changed_keys(v)
    if (d / "summary.json").is_file() and changes == {}:
        return "skip"
    if not run_dir.has_progress(d):
        return "again"
    if changes is not None and all(k.startswith(run_dir.MAY_CHANGE) and k != LENGTH for k in changes):
        return "resume"
    if overwrite:
        return "overwrite"
    if changes is not None and list(changes) == [LENGTH]:
        old, new = changes[LENGTH]
        flag = f"--steps {steps}" if steps is not None else f"trainer.max_steps={new}"
        raise UserError(f"{flag}: `{d}` holds a run of trainer.max_steps={old}; its steps so far followed the "
                        f"learning-rate schedule of a {old}-step run, not that of a {new}-step one, so resuming it "
                        "would not compare like for like; pass --overwrite to train it again from step 0, or choose "
                        "another --out")
    raise UserError(f"`{d}` holds a run of another recipe (changed: {', '.join(changes or ['unknown'])}); pass "
                    "--overwrite to train it again, or choose another --out")


def changed_keys(v: Variant) -> dict[str, list] | None:
    """Recipe key -> [old, new] for the values that differ from the run in the variant's dir (None: that run has no
    recipe)."""
    path = v.dir / run_dir.RESOLVED
    if v.recipe is None or not path.is_file():
        return None
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {k: c for k, c in run_dir.diff(old, v.recipe.model_dump(mode="json")).items() if k != "output.dir"}


def train_command(v: Variant, recipe: Path, common: list[str], act: str, debug: bool) -> list[str]:
    flags = {"resume": ["--resume"], "again": ["--overwrite"], "overwrite": ["--overwrite"]}.get(act, []) + \
        ["--debug"] * debug
    return [sys.executable, "-m", "tunekit", "train", str(recipe), *common, *v.overrides, *v.replaced,
            f"output.dir={yaml.safe_dump(str(v.dir), default_style=chr(34)).strip()}", *flags]


def run_one(v: Variant, act: str | None, recipe: Path, common: list[str], label: str, debug: bool) -> dict:
    """Train one variant (or skip it); one console line when it starts and one when it ends."""
    if v.recipe is None:
        say(f"{label}: not a valid recipe, not run: {first_line(v.error or '')}")
        return {"status": "invalid", "reason": v.error}
    earlier = earlier_run(v, act)
    if act == "skip":
        say(f"{label}: already finished in {v.dir} (same recipe): skipped")
        return {"status": "finished", "reused": True, "earlier": earlier}
    log = v.dir / run_dir.LOG
    cmd = train_command(v, recipe, common, act or "fresh", debug)
    say(f"{label}: training{HOW.get(act or '', '')}, log: {log}")
    run_dir.make_dir(v.dir)
    start = time.perf_counter()
    with open(log, "a" if act == "resume" else "w", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        code = wait(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    wall = round(time.perf_counter() - start, 1)
    if code in STOPPED:
        say(f"{label}: stopped after {wall:.0f} s (a signal); the log: {log}")
        return {"status": "stopped", "exit_code": code, "wall_s": wall, "reason": "stopped by a signal",
                "earlier": earlier}
    if code != 0 or not (v.dir / "summary.json").is_file():
        reason = failure_reason(log, code)
        say(f"{label}: failed after {wall:.0f} s: {first_line(reason)} (log: {log})")
        return {"status": "failed", "reason": reason, "wall_s": wall, "earlier": earlier}
    numbers = report.numbers(v.dir)
    say(f"{label}: finished in {wall:.0f} s: {report.one_line(numbers)}")
    return {"status": "finished", "wall_s": wall, "earlier": earlier}


def earlier_run(v: Variant, act: str | None) -> str | None:
    """What this compare does with an earlier run in the variant's dir, for compare.md (None: there was none)."""
    if act == "skip":
        return "the earlier run's results (a finished run of the same recipe); not trained again"
    if act == "resume":
        ckpt = checkpoints.latest_checkpoint(v.dir)
        changes = ", ".join(f"`{k}`" for k in changed_keys(v) or {})
        return f"resumed from the earlier run's `{ckpt.name if ckpt else 'checkpoint'}`" + \
            (f" (changed since: {changes})" if changes else "")
    if act == "again":
        return "trained again from step 0: the earlier run stopped before its first checkpoint"
    if act == "overwrite":
        changes = ", ".join(f"`{k}`" for k in changed_keys(v) or {}) or "unknown"
        return f"trained again from step 0 (--overwrite): the earlier run's recipe differed in {changes}"
    return None


def wait(proc: subprocess.Popen) -> int:
    """Wait for the training process; SIGINT/SIGTERM sent to compare are passed on to it (it runs in its own
    session, so a Ctrl-C reaches it once, through here), and it stops at a step boundary with a checkpoint."""
    def forward(signum: int, frame: object) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 and -code in (signal.SIGINT, signal.SIGTERM) else code


def failure_reason(log: Path, code: int) -> str:
    """The run's `error: ...` message (with its indented lines), else the exception a traceback ends with."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if ERROR_LINE.match(lines[i]):
            more = list(itertools.takewhile(lambda ln: ln.startswith(" "), lines[i + 1:]))
            return "\n".join([lines[i], *more[:8]])
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line):
            return line
    if code < 0:
        return f"killed by {signal.Signals(-code).name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exit code {code}"


def first_line(text: str) -> str:
    """The line of an error that says what is wrong (a recipe error's first line only counts the errors)."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if len(lines) > 1 and re.search(r"\d+ errors? in recipe$", lines[0]):
        return lines[1] + (f" (and {len(lines) - 2} more)" if len(lines) > 2 else "")
    return lines[0] if lines else ""


def summarise(doc: dict, parent: Path) -> int:
    done = [v for v in doc["variants"] if v["status"] == "finished"]
    failed = [v["name"] for v in doc["variants"] if v["status"] in ("failed", "invalid")]
    say(f"compare: {len(done)} of {len(doc['variants'])} variants finished"
        + (f"; not finished: {', '.join(failed)}" if failed else "")
        + f"; table in {parent / report.MD}" + (f", curves in {parent / report.PNG}" if doc.get("plot") else ""))
    return 0 if done else 1
