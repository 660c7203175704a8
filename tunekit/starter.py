"""`tunekit init`: a commented starter recipe from a few choices, validated before it is written.

The data format is read from the data file's first row when not given, the trainer kind follows from the format
(preference pairs -> dpo, labelled completions -> kto, question/answer/solution -> reft, else sft), and the method's
usual starting values are filled in. Every key written carries its description from the schema as a comment; all
other keys keep their defaults (`tunekit validate --explain FILE` shows every one).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from tunekit.data.schema import ROW_KEYS, DatasetSpec
from tunekit.errors import UserError, did_you_mean
from tunekit.methods.schema import LORA_VARIANTS
from tunekit.paths import create_dir
from tunekit.recipe import reference
from tunekit.recipe.schema import Recipe

KIND_FOR_FORMAT = {"preference": "dpo", "unpaired_preference": "kto", "prompt_answer": "reft"}
# Formats tried in this order when a row's keys fit several (a `messages` row may also carry `text`, ...).
DETECT_ORDER = ("messages", "sharegpt", "preference", "unpaired_preference", "prompt_answer", "alpaca",
                "prompt_completion", "text")
CHECKED_ROWS = 5  # rows `init` reads in the format before it writes the recipe
ADAPTER_LR, FULL_LR = {"sft": 2e-4, "dpo": 5e-5, "kto": 5e-5, "orpo": 5e-5, "cpo": 5e-5, "reft": 1e-4}, 1e-5


def detect_format(path: str) -> str:
    """The format whose required keys the first row has (DETECT_ORDER breaks ties); an error naming the keys if
    none fits."""
    from tunekit.data.schema import DatasetSpec
    from tunekit.data.sources import read_rows

    rows = read_rows(DatasetSpec(path=path, format="text"))
    if not len(rows):
        raise UserError(f"--data {path}: the file has no rows")
    (first,), _ = rows.fetch([0])
    keys = set(first)
    for fmt in DETECT_ORDER:
        if set(ROW_KEYS[fmt]) <= keys:
            return fmt
    raise UserError(f"--data {path}: cannot tell the format from the first row's keys ({', '.join(sorted(first))}); "
                    f"give --format (one of {', '.join(DETECT_ORDER)}) and map columns in the recipe's `columns:`")


def starter(model: str, data: str, fmt: str, method: str, kind: str, name: str) -> dict:
    """The starter recipe's sections (only the keys a new user should look at first)."""
    adapter = method not in ("full", "freeze", "galore", "lisa", "hft")
    method_cfg: dict = {"name": method}
    if method in ("lora", "qlora", *LORA_VARIANTS):
        method_cfg.update(r=16, alpha=32, target_modules="all-linear")
    lr = ADAPTER_LR.get(kind, 1e-4) if adapter else FULL_LR
    trainer: dict = {"kind": kind, "learning_rate": lr, "num_epochs": 1, "per_device_batch_size": 4,
                     "gradient_accumulation_steps": 4, "lr_scheduler": "cosine", "warmup_ratio": 0.03,
                     "logging_steps": 10}
    data_cfg: dict = {"train": [{"path": data, "format": fmt}], "max_length": 2048}
    if kind == "reft":  # two stages: SFT warm-up on the solutions, then RL rewarded by the answers
        trainer = {"kind": kind, "warmup": {**{k: v for k, v in trainer.items() if k != "kind"}, "num_epochs": 2},
                   "rl": {"algorithm": "grpo", "learning_rate": lr / 10, "num_epochs": 1, "per_device_batch_size": 8,
                          "num_generations": 4, "logging_steps": 10,
                          "rewards": [{"type": "numeric_match"}, {"type": "format", "weight": 0.1}]}}
    else:  # reft scores its own held-out questions
        data_cfg["eval_fraction"] = 0.02
        trainer["eval_steps"] = 100
    return {"model": {"path": model, "dtype": "auto"}, "data": data_cfg, "method": method_cfg, "trainer": trainer,
            "output": {"dir": f"runs/{name}", "save_steps": 200}}


def init_recipe(out: Path, model: str, data: str, fmt: str | None, method: str, kind: str | None,
                force: bool) -> Recipe:
    """Write the starter recipe to `out` after validating it (data file included); returns it."""
    from tunekit.data.sources import check_exists

    if out.exists() and not force:
        raise UserError(f"{out} exists; choose another file name or pass --force to replace it")
    if out.suffix not in (".yaml", ".yml"):
        raise UserError(f"{out}: give the recipe a .yaml file name")
    fmt_given = fmt is not None
    fmt = fmt or detect_format(data)
    if fmt not in ROW_KEYS:
        raise UserError(f"--format: `{fmt}` is not a data format; choose one of {', '.join(ROW_KEYS)}")
    sections = starter(model, data, fmt, method, kind or KIND_FOR_FORMAT.get(fmt, "sft"), out.stem)
    try:
        recipe = Recipe.model_validate(sections)
    except ValidationError as e:
        raise UserError(_flag_error(e.errors()[0], f"--model {model} --method {method} --format {fmt}")) from None
    check_exists(recipe.data.train)
    check_rows(recipe.data.train[0], "--format" if fmt_given else f"--data {data} (format read as `{fmt}`)")
    header = (f"# Starter recipe written by `tunekit init`. Check it: tunekit validate {out}  (--explain lists every\n"
              f"# key with its default).  Train: tunekit train {out}\n")
    create_dir(out.parent, "OUT")
    try:
        out.write_text(header + reference.commented(sections, recipe), encoding="utf-8")
    except OSError as e:
        raise UserError(f"OUT {out}: cannot write the file ({e.strerror or e})") from None
    yaml.safe_load(out.read_text(encoding="utf-8"))  # the comments never break the YAML
    return recipe


def check_rows(spec: DatasetSpec, flag: str) -> None:
    """Read the first CHECKED_ROWS rows as `spec.format` says, with the format's own error (a missing column, a
    wrong type) told in terms of `flag`: detect_format looks at the first row's keys only, and --format at none."""
    from tunekit.data.formats import FORMATS
    from tunekit.data.preference import ROW_CONVERTERS
    from tunekit.data.sources import read_rows

    convert = {**FORMATS, **ROW_CONVERTERS}[spec.format]
    rows = read_rows(spec)
    if not len(rows):
        raise UserError(f"--data {spec.path}: the file has no rows")
    raw, wheres = rows.fetch(list(range(min(CHECKED_ROWS, len(rows)))))
    for row, where in zip(raw, wheres):
        try:
            convert(row, spec, where)
        except UserError as e:
            raise UserError(f"{flag}: the data does not read as format `{spec.format}`: {e}") from None


def _flag_error(err: dict, flags: str) -> str:
    """A validation error of the starter, told in terms of the flag that caused it."""
    if err["type"] == "union_tag_invalid":  # an unknown method name or trainer kind
        flag = {"method": "--method", "trainer": "--trainer"}.get(str(err["loc"][0]), str(err["loc"][0]))
        tags = re.findall(r"'([^']+)'", err["ctx"]["expected_tags"])
        tag = err["ctx"]["tag"]
        return f"{flag}: `{tag}` is not one of {', '.join(tags)}.{did_you_mean(tag, tags)}"
    loc = ".".join(map(str, err["loc"]))
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"tunekit init: {loc + ': ' if loc else ''}{msg} (from the flags {flags})"
