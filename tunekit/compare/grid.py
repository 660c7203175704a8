"""The grid of a `tunekit compare`: `--vary` axes parsed, expanded to variants (the cartesian product) and named.

    --vary method.name=lora,ia3 --vary trainer.learning_rate=1e-3,3e-3   -> 4 variants

Values are split at commas outside brackets and quotes (`method.target_modules=[q_proj,v_proj],all-linear` has
two values) and parsed as YAML, as overrides are. A value may carry more overrides after `+`, applied with it:
`method.name=lora,lora+method.use_rslora=true,ia3` (rsLoRA is LoRA with `use_rslora`).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tunekit.errors import UserError
from tunekit.recipe.overrides import parse_override

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

# `+` starts another override only where a dotted key and `=` follow (`1e+3` stays one value)
PLUS = re.compile(r"\+(?=[A-Za-z_][\w-]*(?:\.[\w-]+)*=)")
UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")
MAX_NAME = 120
OWNED_KEYS = ("output.dir",)  # compare sets it: one dir per variant under the parent


@dataclass(frozen=True)
class Item:
    """One value of an axis: the override KEY=VALUE and the overrides joined to it with `+`."""

    overrides: tuple[str, ...]

    @property
    def text(self) -> str:
        return "+".join(self.overrides)


@dataclass
class Axis:
    key: str
    items: list[Item]
    text: str  # the --vary argument as typed


@dataclass
class Variant:
    """One combination of axis values; filled in by validation (`check.py`) and naming."""

    items: tuple[Item, ...]
    recipe: Recipe | None = None  # None: the variant is not a valid recipe
    error: str | None = None  # the validation error, as `validate` prints it
    blamed: set[str] = field(default_factory=set)  # overrides the error points at
    left_out: list[str] = field(default_factory=list)  # recipe keys the variant's method/trainer kind does not have
    replaced: list[str] = field(default_factory=list)  # section overrides that carry the left-out keys to train
    name: str = ""
    dir: Path = Path()

    @property
    def overrides(self) -> list[str]:
        return [o for item in self.items for o in item.overrides]


def split_values(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def parse_vary(text: str) -> Axis:
    """`KEY=V1,V2,...` -> an Axis; bad syntax is a UserError (exit 2)."""
    example = "e.g. --vary method.name=lora,ia3"
    if "=" not in text:
        raise UserError(f"--vary `{text}`: expected KEY=V1,V2,... with a dotted recipe key, {example}")
    key, raw = text.split("=", 1)
    key = key.strip()
    parse_override(f"{key}=")  # the key's syntax (no empty parts)
    values = [v.strip() for v in split_values(raw)]
    if not raw.strip() or not all(values):
        raise UserError(f"--vary `{text}`: a value is empty; give values separated by commas, {example}")
    items = []
    for v in values:
        first, *more = PLUS.split(v)
        overrides = (f"{key}={first}", *more)
        for o in overrides:
            parse_override(o)
        items.append(Item(overrides))
    dupes = sorted({i.text for i in items if items.count(i) > 1})
    if dupes:
        raise UserError(f"--vary `{text}`: {', '.join(dupes)} given twice")
    return Axis(key, items, text)


def check_axes(axes: list[Axis], overrides: list[str], steps: int | None) -> None:
    """Keys given twice (two axes, an axis and an override, a `+` override and an axis) or owned by compare."""
    override_keys = {parse_override(o).keys: o for o in overrides}
    if any(".".join(k).startswith(OWNED_KEYS) for k in override_keys):
        raise UserError("compare sets each variant's output.dir (one dir per variant under --out): give --out instead")
    axis_keys: dict[tuple, str] = {}
    for a in axes:
        keys = tuple(a.key.split("."))
        if keys in axis_keys:
            raise UserError(f"--vary: `{a.key}` is varied twice; give all its values in one --vary")
        axis_keys[keys] = a.text
    for a in axes:
        for o in {o for item in a.items for o in item.overrides}:
            keys, dotted = parse_override(o).keys, ".".join(parse_override(o).keys)
            if dotted.startswith(OWNED_KEYS):
                raise UserError(f"--vary `{a.text}`: compare sets output.dir (one dir per variant under --out)")
            if keys in override_keys:
                raise UserError(f"`{dotted}` is both varied (--vary {a.text}) and overridden "
                                f"({override_keys[keys]}); keep one")
            if keys in axis_keys and axis_keys[keys] != a.text:
                raise UserError(f"`{o}` in --vary {a.text} sets `{dotted}`, which --vary {axis_keys[keys]} varies")
            if steps is not None and dotted == "trainer.max_steps":
                raise UserError(f"--steps sets trainer.max_steps, which --vary {a.text} varies; keep one")


def expand(axes: list[Axis]) -> list[Variant]:
    """The cartesian product, the first axis varying slowest."""
    return [Variant(items) for items in itertools.product(*(a.items for a in axes))]


def display(override: str, recipe: Recipe | None) -> str:
    """`KEY=VALUE` with the value as the recipe resolved it when it is a plain scalar (`1e-3` -> `0.001`)."""
    ov = parse_override(override)
    value: object = recipe.model_dump(mode="json") if recipe is not None else None
    for k in ov.keys:
        value = value.get(k) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return f"{'.'.join(ov.keys)}={str(value).lower()}"
    if isinstance(value, (int, float, str)) and not isinstance(ov.value, (dict, list)):
        return f"{'.'.join(ov.keys)}={value}"
    return override.strip()


def dir_name(name: str) -> str:
    """A filesystem-safe dir name: unsafe characters become `_`, and a changed or shortened name gets 8 hex
    digits of the full name's hash, so two variants never share a dir."""
    safe = UNSAFE.sub("_", name)
    if safe == name and len(name) <= MAX_NAME and not name.startswith(("-", ".")):
        return name
    return f"{safe[:MAX_NAME - 9].strip('_.-') or 'variant'}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def name_variants(variants: list[Variant], parent: Path) -> None:
    """Each variant's name (its items, values as resolved) and its dir under `parent`."""
    shown: dict[str, str] = {}
    for v in sorted(variants, key=lambda v: v.recipe is None):  # a value as the first valid variant resolves it
        shown.update({o: display(o, v.recipe) for o in v.overrides if o not in shown})
    for v in variants:
        v.name = ",".join("+".join(shown[o] for o in item.overrides) for item in v.items)
        v.dir = parent / dir_name(v.name)
        if v.recipe is not None:
            v.recipe.output.dir = str(v.dir)
    seen: dict[Path, str] = {}
    for v in variants:
        if v.dir in seen:
            raise UserError(f"--vary: the variants `{seen[v.dir]}` and `{v.name}` are the same (their values resolve "
                            "alike); give each value once")
        seen[v.dir] = v.name
