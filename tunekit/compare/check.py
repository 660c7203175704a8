"""Validate every variant before anything runs, with the errors `tunekit validate` gives.

A variant that switches a section's kind (`method.name`, `trainer.kind`) leaves out the recipe's options for that
section that the new kind does not have (`r` and `alpha` of a LoRA recipe for `ia3`), so each method runs with its
own defaults for them; what was left out is listed per variant. Options set on the command line are never left out.

Which errors stop the command (exit 2) and which only the variant:
- an override (a --vary value, a KEY=VALUE, --steps) that every variant holding it rejects at its own key (an
  unknown key, a value of the wrong type, a method name that does not exist): the command line is wrong;
- no variant is a valid recipe: nothing could run;
- otherwise an invalid variant is an incompatible combination (`ia3` with `method.r=8`): listed, not run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from tunekit.compare.grid import Axis, Variant
from tunekit.data.sources import check_exists
from tunekit.errors import UserError
from tunekit.recipe.errors import error_keys, format_validation_error, matching_override
from tunekit.recipe.load import read_yaml
from tunekit.recipe.overrides import Override, apply_override, parse_override
from tunekit.recipe.schema import Recipe

TAGS = ("name", "kind")  # the keys that choose a section's kind
PLUS_HINT = "A --vary value can carry more overrides after `+`, e.g. --vary method.name=lora,lora+method.use_rslora=true"


def validate_all(path: Path, common: list[str], variants: list[Variant]) -> None:
    """Fill in each variant's recipe or error; raise a UserError when the command line itself is wrong."""
    data, node = read_yaml(path)
    base = [parse_override(o) for o in common]
    for v in variants:
        validate(v, path, data, node, base)


def validate(v: Variant, path: Path, data: dict, node: yaml.Node | None, base: list[Override]) -> None:
    own = [parse_override(o) for o in v.overrides]
    parsed = [*base, *own]
    d = copy.deepcopy(data)
    try:
        for ov in parsed:
            apply_override(d, ov)
        v.recipe = _validated(v, d, own, parsed)
        check_exists([*v.recipe.data.train, *v.recipe.data.eval])
    except ValidationError as e:
        v.left_out = []
        v.error = format_validation_error(e, path, node, parsed)
        v.blamed = {o.text for _, keys in error_keys(e) if (o := matching_override(keys, parsed))}
        return
    except UserError as e:  # an override that cannot apply, a missing data file
        v.recipe, v.error, v.left_out = None, str(e), []
        v.blamed = {o.text for o in parsed if f"override `{o.text}`" in str(e)}
        return
    sections = sorted({tuple(k.split(".")[:-1]) for k in v.left_out})
    v.replaced = [f"{'.'.join(s)}={json.dumps(_get(d, s), separators=(',', ':'))}" for s in sections]


def _validated(v: Variant, d: dict, own: list[Override], parsed: list[Override]) -> Recipe:
    """The recipe, leaving out what `left_out` allows (a second error may show once keys are gone)."""
    while True:
        try:
            return Recipe.model_validate(d)
        except ValidationError as e:
            drop = left_out(e, own, parsed)
            if not drop:
                raise
            for keys in drop:
                _get(d, keys[:-1]).pop(keys[-1], None)
                v.left_out.append(".".join(map(str, keys)))


def left_out(err: ValidationError, own: list[Override], parsed: list[Override]) -> list[tuple]:
    """Unknown keys of a section whose kind this variant chose, that no override set."""
    chosen = {ov.keys[:-1] for ov in own if ov.keys[-1] in TAGS}
    return [keys for kind, keys in error_keys(err)
            if kind == "extra_forbidden" and len(keys) > 1 and tuple(map(str, keys[:-1])) in chosen
            and matching_override(keys, parsed) is None]


def _get(d: dict, keys: tuple) -> dict:
    for k in keys:
        d = d[k]
    return d


def check_usable(variants: list[Variant], axes: list[Axis], common: list[str], steps: int | None) -> None:
    """Exit 2 (UserError) when an override is rejected by every variant holding it, or no variant is valid."""
    names = {o: f"--vary {a.text}" for a in axes for item in a.items for o in item.overrides}
    names.update({o: f"override {o}" for o in common})
    if steps is not None:
        names[f"trainer.max_steps={steps}"] = f"--steps {steps}"
    for o, where in names.items():
        holding = [v for v in variants if o in v.overrides or o in common]
        if holding and all(v.recipe is None and o in v.blamed for v in holding):
            hint = f"\n{PLUS_HINT}" if where.startswith("--vary") and o.split("=", 1)[0].endswith(TAGS) else ""
            raise UserError(f"{where}: `{o}` is refused in every variant:\n{holding[0].error}{hint}")
    if not any(v.recipe for v in variants):
        errors = list(dict.fromkeys(v.error for v in variants if v.error))
        raise UserError("no variant is a valid recipe, nothing to run:\n" + "\n".join(errors[:5]))
