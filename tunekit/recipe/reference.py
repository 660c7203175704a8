"""The option reference, read from the recipe schema: `docs/reference.md` and `tunekit explain KEY`.

Every key is listed with its type, default, allowed values, constraints and description. Sections that are
unions (`trainer` by `kind`, `method` by `name`) list each variant's keys; a key several variants share with the
same meaning is shown once with the variants that have it.

Regenerate the doc with `python -m tunekit.recipe.reference > docs/reference.md` (a test checks it is current).
"""

from __future__ import annotations

import json
import re
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tunekit.errors import UserError, did_you_mean
from tunekit.methods.schema import PEFT_TUNERS, method_name
from tunekit.recipe.schema import Recipe

CHOOSES = "Chooses the variant (and so the other keys of this section):"


@dataclass(frozen=True)
class Option:
    key: str  # dotted; list items as `data.train[].path`
    type: str
    default: str  # JSON text, or "required"
    description: str
    allowed: tuple[str, ...] = ()
    constraints: str = ""
    variant: str = ""  # "kind: dpo" inside a union section
    section: bool = False  # the key holds a nested section


def _args(tp: typing.Any) -> tuple:
    return typing.get_args(tp)


def _unwrap(tp: typing.Any) -> tuple[list[type[BaseModel]], bool]:
    """The section models inside an annotation (through Annotated, unions, Optional, list) and whether in a list."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(_args(tp)[0])
    if origin in (list, tuple):
        models, _ = _unwrap(_args(tp)[0]) if _args(tp) else ([], False)
        return models, bool(models)
    if origin in (typing.Union, types.UnionType):
        found = [_unwrap(a) for a in _args(tp)]
        return [m for ms, _ in found for m in ms], any(inlist for _, inlist in found)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp], False
    return [], False


def _literals(tp: typing.Any) -> tuple[str, ...]:
    if typing.get_origin(tp) is typing.Literal:
        return tuple(str(a) for a in _args(tp))
    return tuple(v for a in _args(tp) for v in _literals(a))


def _plain(tp: typing.Any) -> typing.Any:
    """The annotation without validator metadata (`Annotated[str, AfterValidator(...)]` -> `str`), also in unions:
    the reference shows types, not the functions that check them."""
    if typing.get_origin(tp) is typing.Annotated:
        return _plain(_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.Union[tuple(_plain(a) for a in _args(tp))]  # noqa: UP007 (rebuilt from a tuple)
    return tp


def type_text(tp: typing.Any) -> str:
    tp = _plain(tp)
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + " | ".join(map(str, _args(tp)))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "null").replace("Literal", "")


def _default(info: typing.Any) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section defaults)"
    return json.dumps(value if not isinstance(value, list) or all(not isinstance(v, BaseModel) for v in value)
                      else [v.model_dump(mode="json") for v in value])


def _constraints(info: typing.Any) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "min length", "max_length": "max length"}
    out = [f"{sym} {getattr(m, attr)}" for m in info.metadata for attr, sym in words.items() if hasattr(m, attr)]
    return ", ".join(out)


def _tag(model: type[BaseModel]) -> str:
    """`kind: dpo` / `name: lora`: the variant's discriminator (the first Literal field with one value)."""
    for name, info in model.model_fields.items():
        values = _literals(info.annotation)
        if typing.get_origin(info.annotation) is typing.Literal and len(values) == 1:
            return f"{name}: {values[0]}"
    return model.__name__


def options(model: type[BaseModel] = Recipe, prefix: str = "", variant: str = "",
            keep: typing.Callable[[type[BaseModel]], bool] = lambda m: True, skip: str = "") -> Iterator[Option]:
    """Every option under `model`, depth first; `keep` chooses which union variants to include. A union's
    discriminator (`trainer.kind`, `method.name`) is one option listing every value with its description."""
    for name, info in model.model_fields.items():
        if name == skip:
            continue
        key = prefix + name
        subs, in_list = _unwrap(info.annotation)
        yield Option(key, type_text(info.annotation) if not subs else ("list of sections" if in_list else "section"),
                     _default(info), (info.description or "").strip(), _literals(info.annotation),
                     _constraints(info), variant, bool(subs))
        inner = key + ("[]." if in_list else ".")
        if len(subs) == 1:
            yield from options(subs[0], inner, variant, keep)
        if len(subs) > 1:
            kept = [sub for sub in subs if keep(sub)]
            field = _tag(kept[0]).split(":")[0]
            values = [(_tag(sub).split(": ", 1)[1], sub.model_fields[field].description or "") for sub in kept]
            yield Option(inner + field, "one of " + " | ".join(v for v, _ in values), "required",
                         CHOOSES + " " +
                         "; ".join(f"`{v}`: {d.strip().rstrip('.')}" for v, d in values), tuple(v for v, _ in values), "", variant)
            for sub in kept:
                yield from options(sub, inner, _tag(sub), keep, skip=field)


def not_generated(model: type[BaseModel]) -> bool:
    """For the doc: peft tuners generated from peft's configs are listed by name (`tunekit methods show NAME`)."""
    return model not in PEFT_TUNERS


def grouped(opts: list[Option]) -> list[tuple[Option, list[str]]]:
    """Options with the same key and meaning merged, each with the variants that have it ([] = every one);
    a key most variants have is written `not VARIANT`."""
    groups: dict[tuple, list[Option]] = {}
    for o in opts:
        groups.setdefault((o.key, o.type, o.default, o.description, o.allowed, o.constraints), []).append(o)
    variants_of: dict[str, set[str]] = {}
    for o in opts:
        head = o.key.rsplit(".", 1)[0]
        variants_of.setdefault(head, set()).add(o.variant)
    out = []
    for members in groups.values():
        names = [m.variant for m in members if m.variant]
        head = members[0].key.rsplit(".", 1)[0]
        others = variants_of[head] - {""} - set(names)
        if names and others and len(others) < len(names) and len(others) <= 2:
            names = [f"{next(iter(others)).split(':')[0]}: not {', '.join(o.split(': ')[1] for o in sorted(others))}"]
        out.append((members[0], [] if not names or not others and len(names) > 1 else names))
    return out


def _facts(o: Option) -> list[str]:
    facts = [f"type: {o.type}", f"default: {o.default}"]
    facts += [f"constraints: {o.constraints}"] * bool(o.constraints)
    return facts


def explain(key: str) -> str:
    """What `tunekit explain KEY` prints: the key's description, type, default and the variants that have it."""
    opts = list(options())
    keys = sorted({o.key.replace("[]", "") for o in opts})
    found = [o for o in opts if o.key.replace("[]", "") == key.replace("[]", "")]
    if not found:
        tails = sorted({k for k in keys if k.endswith("." + key)})
        hint = f" Did you mean {', '.join(f'`{t}`' for t in tails[:6])}?" if tails else did_you_mean(key, keys)
        raise UserError(f"no recipe key `{key}`.{hint} Top-level sections: model, data, method, trainer, output, "
                        "eval, launch; `tunekit explain trainer` lists a section's keys.")
    generated = {f"name: {method_name(m)}" for m in PEFT_TUNERS}
    groups = grouped(found)
    peft_only = sorted(v.split(": ")[1] for o, vs in groups if vs and set(vs) <= generated for v in vs)
    lines = []
    for o, variants in groups:
        if variants and set(variants) <= generated:
            continue
        where = f"  (only with {_variant_text(variants)})" if variants else ""
        if o.description.startswith(CHOOSES):  # a discriminator: one line per value
            lines += [f"{o.key}{where}", f"  {CHOOSES}"] + [f"    {v:<12} {textwrap.shorten(d, 100)}" for v, d in
                                                           re.findall(r"`([^`]+)`: (.*?)(?:; (?=`)|$)", o.description)]
            continue
        lines += [f"{o.key}{where}", f"  {o.description}"] + [f"  {f}" for f in _facts(o)]
        if o.section:
            lines += _children(o, opts)
    if peft_only:
        lines.append(f"{key} is also an option of the peft tuners {', '.join(peft_only)} (with their own meaning "
                     "and default): `tunekit methods show NAME`.")
    return "\n".join(lines) + "\n"


def _parent(key: str) -> str:
    return key.rsplit(".", 1)[0].removesuffix("[]") if "." in key else ""


def _children(section: Option, opts: list[Option]) -> list[str]:
    generated = {f"name: {method_name(m)}" for m in PEFT_TUNERS}
    kids = grouped([c for c in opts if _parent(c.key) == section.key and c.variant not in generated])
    lines = ["  keys:"] * bool(kids)
    for c, v in kids:
        only = f"  [{_variant_text(v, 4)}]" if v else ""
        lines.append(f"    {c.key.rsplit('.', 1)[1]:<26} {textwrap.shorten(c.description, 80)}{only}")
    return lines


def _variant_text(variants: list[str], limit: int = 12) -> str:
    field = variants[0].split(":")[0]
    names = [v.split(": ", 1)[-1] for v in variants]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{field} {', '.join(names[:limit])}{more}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown() -> str:
    """docs/reference.md: one table per top-level section, every key (generated peft tuners by name)."""
    opts = list(options(keep=not_generated))
    lines = ["# Recipe option reference", "",
             "<!-- Generated from the schema by `python -m tunekit.recipe.reference > docs/reference.md`; "
             "tests/unit/test_reference.py checks it is current. Do not edit by hand. -->", "",
             "Every recipe key with its type, default, constraints and description. `tunekit explain KEY` prints "
             "one entry in the terminal (e.g. `tunekit explain trainer.lr_scheduler`). Keys of `trainer` depend on "
             "`trainer.kind`, keys of `method` on `method.name`: the *only with* column says which variants have "
             "a key (empty: all of them). `[]` marks the items of a list (`data.train[].path`).", ""]
    for top in Recipe.model_fields:
        section = [o for o in opts if o.key == top or o.key.startswith(top + ".") or o.key.startswith(top + "[]")]
        lines += [f"## {top}", "", section[0].description, "", "| key | only with | type | default | description |",
                  "|---|---|---|---|---|"]
        for o, variants in grouped(section[1:]):
            desc = o.description + (f" ({o.constraints})" if o.constraints else "")
            only = _variant_text(variants, 50) if variants else ""
            lines.append(f"| `{o.key}` | {_cell(only)} | {_cell(o.type)} | `{_cell(o.default)}` | {_cell(desc)} |")
        lines.append("")
    tuners = ", ".join(f"`{method_name(m)}`" for m in PEFT_TUNERS)
    lines += ["### More methods", "", f"Every other peft tuner is a `method.name` too, with peft's own options "
              f"(`tunekit methods show NAME`, `tunekit explain method.KEY`): {tuners}.", ""]
    return "\n".join(lines)


def commented_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML with each key's description as a comment (`tunekit validate --explain`)."""
    return commented(recipe.model_dump(mode="json"), recipe)


def commented(data: dict, recipe: Recipe) -> str:
    """`data` (the recipe's sections, or some of their keys) as YAML with each key's description as a comment;
    `recipe` chooses the trainer kind's and method's descriptions."""
    chosen = {f"kind: {recipe.trainer.kind}", f"name: {recipe.method.name}", ""}
    descs = {o.key.replace("[]", ""): textwrap.shorten(o.description, 100) for o in options()
             if o.variant in chosen or o.key.split(".")[0] not in ("trainer", "method")}
    return "".join(_emit(data, "", 0, descs))


def _emit(data: dict, prefix: str, depth: int, descs: dict) -> Iterator[str]:
    pad = "  " * depth
    for k, v in data.items():
        key = prefix + k
        note = f"  # {descs[key]}" if descs.get(key) else ""
        if isinstance(v, dict) and v:
            yield f"{pad}{k}:{note}\n"
            yield from _emit(v, key + ".", depth + 1, descs)
        elif isinstance(v, list) and v and all(isinstance(i, dict) for i in v):
            yield f"{pad}{k}:{note}\n"
            for item in v:
                body = "".join(_emit(item, key + ".", depth + 2, descs))
                yield f"{pad}  - {body.lstrip()}"
        else:
            yield f"{pad}{k}: {_scalar(v)}{note}\n"


def _scalar(v: object) -> str:
    """A value as YAML reads it back: JSON, except floats in YAML's own form (`1.0e-05`: YAML 1.1 reads JSON's
    `1e-05` as a string)."""
    if isinstance(v, float):
        return yaml.safe_dump(v).split("\n")[0]
    return json.dumps(v)


if __name__ == "__main__":
    print(render_markdown(), end="")
