"""Validation errors that point at the source: `file:line:col`, the key path, expected vs found, did-you-mean.

    recipes/my.yaml:12:3: trainer.learnig_rate: unknown key. Did you mean `learning_rate`?

An override error names the override instead of a file position.
"""

from __future__ import annotations

import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunekit.errors import closest
from tunekit.recipe.overrides import Override
from tunekit.recipe.schema import Recipe

_REPR = reprlib.Repr()  # bounded repr of a found value (an alias bomb's repr would never finish)
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def format_validation_error(
    err: ValidationError, path: Path, root: yaml.Node | None, overrides: list[Override]
) -> str:
    errors = _merge_union_members(err.errors())
    n = len(errors)
    lines = [f"{path}: {n} error{'s' if n > 1 else ''} in recipe"]
    for e in errors:
        lines.append(_format_one(e, path, root, overrides))
    return "\n".join(lines)


# the last part of a loc that names a member of a union of plain types (`bool | int | float | str`)
_UNION_MEMBER = re.compile(r"(bool|int|float|str|none|(list|dict|tuple|set|literal|function-\w+)\[.*\])")


def _merge_union_members(errors: list) -> list:
    """A value that fits no member of a union of plain types is one error (`expected a boolean, an integer ...`),
    not one per member at a path that ends in the member's name (`z.bool`, `z.int`, ...)."""
    merged: list = []
    for e in errors:
        loc = tuple(e["loc"])
        if not (loc and isinstance(loc[-1], str) and _UNION_MEMBER.fullmatch(loc[-1])):
            merged.append(e)
            continue
        last = merged[-1] if merged else {}
        if last.get("type") == "union_members" and tuple(last["loc"]) == loc[:-1] and last["input"] == e["input"]:
            last["ctx"]["members"].append(e["msg"])
        else:
            merged.append({**e, "loc": loc[:-1], "type": "union_members", "ctx": {"members": [e["msg"]]}})
    return merged


def _format_one(e: dict, path: Path, root: yaml.Node | None, overrides: list[Override]) -> str:
    loc = tuple(e["loc"])
    keys = _data_keys(loc) or _named_keys(e)  # loc without union tags; a whole-recipe rule names its key
    etype = e["type"]
    if etype in ("union_tag_invalid", "union_tag_not_found"):
        tag_key = e.get("ctx", {}).get("discriminator", "").strip("'")
        if tag_key and etype == "union_tag_invalid":
            keys = (*keys, tag_key)
    dotted = ".".join(str(k) for k in keys) or "(recipe)"
    override = matching_override(keys, overrides, unknown_key=etype == "extra_forbidden")
    if override is not None:
        where = f"override `{override.text}`"
    else:
        where = _position(path, root, keys, key_not_value=etype == "extra_forbidden")

    if etype == "extra_forbidden":
        msg = _unknown_key(loc, keys)
    elif etype == "missing":
        msg = "required key is missing"
        desc = _field_description(loc)
        if desc:
            msg += f" ({desc})"
    elif etype == "union_tag_invalid":
        ctx = e.get("ctx", {})
        found = ctx.get("tag")
        expected = ctx.get("expected_tags", "")
        options = [t.strip().strip("'") for t in str(expected).split(",")]
        msg = f"expected one of {expected}, found {found!r}"
        guess = closest(str(found), options, cutoff=0.5)
        if guess:
            msg += f". Did you mean `{guess}`?"
    elif etype == "union_members":
        wants = [m[len("Input should be "):] if m.startswith("Input should be ") else m for m in e["ctx"]["members"]]
        listed = f"{', '.join(wants[:-1])} or {wants[-1]}" if len(wants) > 1 else wants[0]
        msg = f"input should be {listed}, found {_short(e.get('input'))}"
    elif etype == "union_tag_not_found":
        tag_key = e.get("ctx", {}).get("discriminator", "").strip("'")
        msg = f"missing `{tag_key}`, which chooses the kind of this section"
    else:
        found = e.get("input")
        found_s = _short(found)
        msg = f"{e['msg'][0].lower()}{e['msg'][1:]}" if e.get("msg") else etype
        if etype not in ("value_error", "assertion_error") and not isinstance(found, dict):
            msg += f", found {found_s}"
        if msg.startswith("value error, "):
            msg = msg[len("value error, ") :]
        if msg.startswith(f"{dotted}: "):  # the key is named once, in front
            msg = msg[len(dotted) + 2 :]
        if etype == "literal_error" and isinstance(found, str):
            options = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
            guess = closest(found, options, cutoff=0.6)
            if guess:
                msg += f". Did you mean `{guess}`?"
    return f"  {where}: {dotted}: {msg}"


def _unknown_key(loc: tuple, keys: tuple) -> str:
    allowed = _allowed_keys(loc[:-1])
    msg = f"unknown key `{keys[-1]}`"
    guess = closest(str(keys[-1]), allowed, cutoff=0.6)
    if "[" in str(keys[-1]):  # `data.train[0].path=x`: an index written into the key
        listed = ".".join(map(str, (*keys[:-1], str(keys[-1]).split("[")[0])))
        return msg + f"; a list item cannot be set by index: give the whole list (`{listed}=[...]`) or edit the recipe"
    if guess:
        return msg + f". Did you mean `{guess}`?"
    return msg + (f"; valid keys here: {', '.join(sorted(allowed))}" if allowed else "")


def _named_keys(e: dict) -> tuple:
    """The key path a cross-section rule's message starts with (`data.packing: only trainer.kind sft ...`): the
    rules check the whole recipe, so pydantic gives them no location; the key they name is where the error is."""
    m = re.match(r"(?:Value error, )?([a-z_]+(?:\.[a-z_]+)+): ", e.get("msg", ""))
    return tuple(m.group(1).split(".")) if m and e["type"] == "value_error" else ()


def error_keys(err: ValidationError) -> list[tuple[str, tuple]]:
    """(pydantic error type, key path as written in the YAML) of each error; a bad tag's path ends in its key
    (`method.name`), as in the message."""
    out = []
    for e in err.errors():
        keys = _data_keys(tuple(e["loc"]))
        tag_key = e.get("ctx", {}).get("discriminator", "").strip("'")
        out.append((e["type"], (*keys, tag_key) if e["type"] == "union_tag_invalid" and tag_key else keys))
    return out


def _short(v: Any) -> str:
    s = _REPR.repr(v)  # bounded: never the repr of a huge value
    return s if len(s) <= 60 else s[:57] + "..."


def matching_override(keys: tuple, overrides: list[Override], unknown_key: bool = False) -> Override | None:
    """The override an error at `keys` points at: the last one whose key is a prefix of (or equal to) the path;
    for an unknown key, also one whose key goes through it (`foo.bar=1` made the unknown section `foo`)."""
    for ov in reversed(overrides):
        n = min(len(ov.keys), len(keys))
        if tuple(str(k) for k in keys[:n]) == ov.keys[:n] and (len(ov.keys) <= len(keys) or unknown_key):
            return ov
    return None


def _position(path: Path, root: yaml.Node | None, keys: tuple, key_not_value: bool) -> str:
    node, key_node = root, None
    for k in keys:
        found = False
        if isinstance(node, yaml.MappingNode):
            for kn, vn in node.value:
                if kn.value == str(k):
                    node, key_node, found = vn, kn, True
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(k, int) and k < len(node.value):
            node, key_node, found = node.value[k], None, True
        if not found:
            break
    target = key_node if key_not_value and key_node is not None else node
    if target is None:
        return f"{path}:1:1"
    m = target.start_mark
    return f"{path}:{m.line + 1}:{m.column + 1}"


# ------------------------------------------------------------------ schema walking (for did-you-mean, descriptions)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """Follow a pydantic error location through the schema; returns the model class at that location."""
    current: Any = Recipe
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return None
    model = _unwrap_to_model(current)
    return model


def _unwrap(tp: Any, part: Any) -> Any:
    tp = _strip_annotated(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(part))
        if field is None and _tag_of(tp) == part:
            return tp  # a one-member tagged union: pydantic still puts the tag in the location
        return field.annotation if field else None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            a = _strip_annotated(a)
            if isinstance(a, type) and issubclass(a, BaseModel):
                tag = _tag_of(a)
                if tag == part:
                    return a
        for a in args:  # not a tag: descend into the first member that has the field
            r = _unwrap(a, part)
            if r is not None:
                return r
        return None
    if origin in (list, tuple) and isinstance(part, int):
        return args[0] if args else None
    if origin is dict:
        return args[1] if len(args) == 2 else None
    return None


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _tag_of(model: type[BaseModel]) -> str | None:
    for key in ("name", "kind"):
        f = model.model_fields.get(key)
        if f is not None and typing.get_origin(f.annotation) is typing.Literal:
            return typing.get_args(f.annotation)[0]
    return None


def _unwrap_to_model(tp: Any) -> type[BaseModel] | None:
    tp = _strip_annotated(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return None


def _field_names(tp: Any) -> list[str]:
    model = _unwrap_to_model(tp)
    return list(model.model_fields) if model else []


def _allowed_keys(loc: tuple) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _field_description(loc: tuple) -> str | None:
    model = _model_at(loc[:-1])
    if model is None:
        return None
    f = model.model_fields.get(str(loc[-1]))
    return f.description if f else None


def _data_keys(loc: tuple) -> tuple:
    """Drop union tags (e.g. `lora` in ('method', 'lora', 'r')) so the path matches the YAML."""
    keys: list = []
    current: Any = Recipe
    for part in loc:
        nxt = _unwrap(current, part)
        model = _unwrap_to_model(nxt) if nxt is not None else None
        if model is not None and _tag_of(model) == part and part not in _field_names(current):
            current = nxt
            continue  # a tag, not a key
        keys.append(part)
        current = nxt
    return tuple(keys)
