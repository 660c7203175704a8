"""A corpus of bad inputs, as a user types them: every case exits 2, prints no traceback, and names the culprit.

Usage errors print click's usage message; recipe, data and option errors print `error: ...` naming the
file:line, field, option or row. Each case is one real CLI run (`validate`, `preprocess`, `merge`, `eval`);
none trains.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import RECIPES, run_cli, tiny_recipe


def _recipe(tmp: Path, edit: Callable[[dict], None] | None = None, text: str | None = None) -> Path:
    """The tiny recipe, changed by `edit` (on its data) or replaced by raw `text` after its `output:` line."""
    path = tiny_recipe(tmp)
    data = yaml.safe_load(path.read_text())
    if edit is not None:
        edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False) + (text or ""))
    return path


def _file(tmp: Path) -> Path:
    """A plain file where a command's output directory would go."""
    (tmp / "afile").write_text("x")
    return tmp / "afile"


def _set(dotted: str, value: object) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        *parents, last = dotted.split(".")
        node = data
        for k in parents:
            node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
        node[last] = value

    return edit


def _raw(tmp: Path, body: bytes) -> Path:
    path = tmp / "raw.yaml"
    path.write_bytes(body)
    return path


def _data_file(tmp: Path, name: str, body: bytes) -> Path:
    data = tmp / name
    data.write_bytes(body)
    return _recipe(tmp, _set("data.train", [{"path": str(data), "format": "messages"}]))


GOOD_ROW = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
BOMB = b"".join([b"a: &a [x, x, x, x, x, x, x, x, x]\n"] + [
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n".encode() for p, c in zip("abcdefgh", "bcdefghi")])

BOMB_LIST = b"\n    - &a [x, x, x, x, x, x, x, x, x]" + b"".join(
    f"\n    - &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]".encode() for p, c in zip("abcdefgh", "bcdefghi"))

# (id, args given a tmp dir, text the error must contain)
CASES: list[tuple[str, Callable[[Path], list], str]] = [
    # usage errors: click's usage message, exit 2
    ("typo-command", lambda t: ["trian"], "No such command 'trian'"),
    ("train-no-recipe", lambda t: ["train"], "Missing argument 'recipe'"),
    ("unknown-option", lambda t: ["train", _recipe(t), "--bogus"], "No such option: --bogus"),
    ("nproc-not-int", lambda t: ["train", _recipe(t), "--nproc", "abc"], "'--nproc'"),
    ("show-negative", lambda t: ["preprocess", _recipe(t), "--show", "-1"], "'--show'"),
    ("merge-no-out", lambda t: ["merge", "x"], "Missing option '--out'"),
    ("bare-tunekit", lambda t: [], "Commands:\n  train"),
    ("bare-recipes", lambda t: ["recipes"], "tunekit recipes [OPTIONS] COMMAND"),
    ("methods-show-no-name", lambda t: ["methods", "show"], "Missing argument 'name'"),
    ("eval-batch-size-0", lambda t: ["eval", t, "--batch-size", "0"], "'--batch-size'"),
    ("eval-max-examples-neg", lambda t: ["eval", t, "--max-examples", "-1"], "'--max-examples'"),
    ("merge-input-typo", lambda t: [(t / "runs").mkdir() or "merge", "runs/lora", "runs/nonexist", "--out", t / "m"],
     "runs/lora: no such run directory, model directory or recipe"),
    ("eval-kind-without-file", lambda t: ["eval", t, "--kind", "choice", "--metric", "contains"],
     "--kind, --metric: describe(s) a --task-file"),
    # merge options
    ("merge-weights-nan", lambda t: ["merge", "a", "b", "--out", t / "m", "--weights", "nan,1"], "nan is not a finite"),
    ("merge-weights-inf", lambda t: ["merge", "a", "b", "--out", t / "m", "--weights", "1,inf"], "inf is not a finite"),
    ("merge-weights-sum-0", lambda t: ["merge", "a", "b", "--out", t / "m", "--weights", "1,-1"], "--weights `1,-1`"),
    ("merge-weights-zero", lambda t: ["merge", "a", "b", "--out", t / "m", "--weights", "0,0"], "--weights `0,0`"),
    ("merge-dtype", lambda t: ["merge", "a", "--out", t / "m", "--dtype", "float8"], "--dtype float8"),
    ("merge-scale-inf", lambda t: ["merge", "a", "b", "--out", t / "m", "--scale", "inf"], "--scale inf"),
    ("merge-outliers-2", lambda t: ["merge", "a", "b", "--method", "breadcrumbs", "--outliers", "2", "--out", t / "m"],
     "--outliers 2.0: must be in [0, 1)"),
    ("merge-outliers-neg", lambda t: ["merge", "a", "b", "--method", "breadcrumbs", "--outliers=-0.5", "--out",
                                      t / "m"], "--outliers -0.5: must be in [0, 1)"),
    ("merge-outliers-density", lambda t: ["merge", "a", "b", "--method", "breadcrumbs", "--outliers", "0.6",
                                          "--density", "0.6", "--out", t / "m"], "--outliers 0.6 --density 0.6"),
    ("merge-scale-unused", lambda t: ["merge", "a", "b", "--scale", "0.5", "--out", t / "m"],
     "--scale 0.5: --method linear does not use it"),
    ("merge-scale-soup", lambda t: ["merge", "a", "b", "--method", "model_stock", "--scale", "2", "--out", t / "m"],
     "--scale 2.0: --method model_stock does not use it"),
    ("merge-density-adapter", lambda t: ["merge", "a", "--density", "0.3", "--out", t / "m"],
     "--density 0.3: an adapter merge (one input, no --method) does not use it"),
    ("merge-tolerance-neg", lambda t: ["merge", "a", "--tolerance=-1", "--out", t / "m"], "--tolerance -1.0: must be"),
    ("chat-repetition-penalty-0", lambda t: ["chat", "a", "--repetition-penalty", "0"], "0.0 is not > 0"),
    ("recipes-copy-unwritable", lambda t: ["recipes", "copy", "quickstart", _file(t) / "q.yaml"],
     "DEST {t}/afile: cannot create directory (a file is in the way)"),
    ("init-unwritable", lambda t: ["init", _file(t) / "x.yaml", "--model", "builtin:tiny-llama", "--data",
                                   "builtin:quickstart/train.jsonl"], "OUT {t}/afile: cannot create directory"),
    ("compare-unwritable", lambda t: ["compare", tiny_recipe(t), "--vary", "method.name=lora,dora", "--out",
                                      _file(t)], "--out {t}/afile: cannot create directory (a file is in the way)"),
    ("eval-unwritable", lambda t: ["eval", tiny_recipe(t), "--task", "quickstart-loss", "--out", _file(t) / "r"],
     "--out {t}/afile/r: cannot create directory (a file is in the way)"),
    # recipe text
    ("recipe-not-utf8", lambda t: ["validate", _raw(t, b"model:\n  path: caf\xe9\n")], "raw.yaml:2:12: byte 0xe9"),
    ("recipe-latin1-comment", lambda t: ["validate", _raw(t, b"# r\xe9sum\xe9\nmodel: {}\n")], "raw.yaml:1:4"),
    ("duplicate-key", lambda t: ["validate", _recipe(t, text="output:\n  dir: elsewhere\n")],
     "duplicate key `output` (first at line"),
    ("duplicate-nested-key", lambda t: ["validate", _raw(t, b"trainer:\n  kind: sft\n  seed: 1\n  seed: 2\n")],
     "raw.yaml:4:3: duplicate key `seed` (first at line 3)"),
    ("alias-bomb-top-level", lambda t: ["validate", _raw(t, BOMB + b"model:\n  path: *i\n")],
     "raw.yaml:6:4: f: aliases (*name) expand this value to 597,871 values"),
    ("alias-bomb-typed-key", lambda t: ["validate", _raw(t, b"data:\n  train:" + BOMB_LIST)],
     "raw.yaml:3:5: data.train: aliases (*name) expand"),
    # recipe values
    ("max-steps-0", lambda t: ["validate", _recipe(t, _set("trainer.max_steps", 0))], "trainer.max_steps: 0 steps"),
    ("max-steps-negative", lambda t: ["validate", _recipe(t, _set("trainer.max_steps", -7))], "trainer.max_steps"),
    ("max-steps-override", lambda t: ["validate", _recipe(t), "trainer.max_steps=0"], "override `trainer.max_steps=0`"),
    ("lr-inf", lambda t: ["validate", _recipe(t, text="")] + ["trainer.learning_rate=.inf"], "trainer.learning_rate"),
    ("lr-inf-in-file", lambda t: ["validate", _raw(t, _recipe(t).read_bytes().replace(b"0.005", b".inf"))],
     "raw.yaml:15:18: trainer.learning_rate: input should be a finite number"),
    ("epochs-inf", lambda t: ["validate", _recipe(t, _set("trainer.num_epochs", float("inf")))], "trainer.num_epochs"),
    ("grad-norm-inf", lambda t: ["validate", _recipe(t, _set("trainer.max_grad_norm", float("inf")))],
     "trainer.max_grad_norm"),
    ("data-weight-inf", lambda t: ["validate", _recipe(t, _set("data.train.0.weight", float("inf")))],
     "data.train.0.weight"),
    ("packing-with-dpo", lambda t: ["validate", RECIPES / "dpo.yaml", "data.packing=true"],
     "data.packing: only trainer.kind sft packs examples; the dpo trainer"),
    ("builtin-escape", lambda t: ["validate", _recipe(t, _set("data.train.0.path", "builtin:../../cli.py"))],
     "`builtin:../../cli.py` points outside"),
    ("data-file-missing", lambda t: ["validate", _recipe(t, _set("data.train.0.path", str(t / "nope.jsonl")))],
     "file not found: " + "{t}/nope.jsonl"),
    ("data-glob-empty", lambda t: ["validate", _recipe(t, _set("data.train.0.path", str(t / "none-*.jsonl")))],
     "matches no files"),
    ("eval-data-missing", lambda t: ["validate", _recipe(t, _set("data.eval", [{"path": "e.jsonl", "format": "messages"}]))],
     "file not found: e.jsonl"),
    ("builtin-model-unknown", lambda t: ["validate", _recipe(t), "model.path=builtin:tiny-lama"],
     "model.path: unknown builtin model `builtin:tiny-lama`"),
    ("params-unreachable-hub", lambda t: ["validate", _recipe(t), "model.path=nobody-tunekit/none", "--params"],
     "could not load the config of `nobody-tunekit/none`"),
    # data files (the data stage: preprocess)
    ("data-jsonl-not-utf8", lambda t: ["preprocess", _data_file(t, "d.jsonl", (GOOD_ROW + "\n").encode() * 3
                                                                 + b'{"messages": "\xff"}\n')], "d.jsonl:4:15: byte 0xff"),
    ("data-json-not-utf8", lambda t: ["preprocess", _data_file(t, "d.json", b"[\n" + GOOD_ROW.encode()
                                                                + b',\n{"x": "\xc3("}]')], "d.json:3:8: byte 0xc3"),
    ("data-lone-surrogate", lambda t: ["preprocess", _data_file(t, "d.jsonl", (GOOD_ROW + "\n").encode() * 2
                                                                 + GOOD_ROW.replace("yo", "\\ud800").encode())],
     "d.jsonl:3: the text holds a lone surrogate"),
]


@pytest.mark.parametrize("make_args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_the_culprit(tmp_path: Path, make_args: Callable, expected: str) -> None:
    proc = run_cli(*make_args(tmp_path), cwd=tmp_path, timeout=120)
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert expected.format(t=tmp_path) in err, err[-3000:]


def test_output_dir_expands_home(tmp_path: Path) -> None:
    """`output.dir: ~/x` (and every other recipe path) means the home directory, as in a shell."""
    recipe = _recipe(tmp_path, _set("output.dir", "~/tunekit-runs/x"))
    proc = run_cli("validate", recipe, "data.cache_dir=~/c", cwd=tmp_path, check=True)
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["output"]["dir"] == str(Path.home() / "tunekit-runs/x")
    assert resolved["data"]["cache_dir"] == str(Path.home() / "c")


def test_a_glob_through_a_self_linking_folder_reads_each_file_once(tmp_path: Path) -> None:
    from tunekit.data.sources import local_files

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text((GOOD_ROW + "\n") * 5)
    (data / "loop").symlink_to(data, target_is_directory=True)  # glob's `**` goes round it ~40 times
    assert len(local_files(str(data / "**" / "*.jsonl"))) == 1
