"""Command-line overrides: `trainer.learning_rate=1e-4` parsed and applied to the recipe's data before validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from tunekit.errors import UserError

# YAML 1.1 (PyYAML) numbers that read as something else than they look: a leading 0 is octal (`010` is 8),
# `a:b` is base 60 (`1:30` is 90)
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_BASE_60 = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")


def surprising_number(text: str) -> str | None:
    """What YAML 1.1 makes of a plain scalar that a reader takes for another number or a text, or None."""
    if not (_OCTAL.fullmatch(text) or _BASE_60.fullmatch(text)):
        return None
    value = yaml.safe_load(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # e.g. `0:30`, a text to PyYAML
    if _OCTAL.fullmatch(text):
        if value == int(text.replace("_", ""), 10):
            return None  # `07`, `00`: the same number either way
        return f"a leading 0 makes YAML read it as the octal number {value}; write the number without the leading 0"
    return f"YAML 1.1 reads `a:b` as the base-60 number {value}; write the number"


@dataclass
class Override:
    text: str  # as typed, e.g. "trainer.learning_rate=1e-4"
    keys: tuple[str, ...]
    value: Any


def parse_override(text: str) -> Override:
    if "=" not in text:
        raise UserError(f"override `{text}`: expected KEY=VALUE with a dotted key, e.g. trainer.learning_rate=1e-4")
    key, raw = text.split("=", 1)
    keys = tuple(k.strip() for k in key.split("."))
    if not all(keys):
        raise UserError(f"override `{text}`: the key `{key}` has an empty part; use dots between names")
    if why := surprising_number(raw.strip()):
        raise UserError(f"override `{text}`: `{raw.strip()}`: {why}, or quote it ('{key}=\"{raw.strip()}\"') "
                        "if it is a text")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UserError(f"override `{text}`: the value is not valid YAML ({e.__class__.__name__})") from None
    return Override(text, keys, value)


def apply_override(data: dict, ov: Override) -> None:
    node = data
    for i, k in enumerate(ov.keys[:-1]):
        child = node.get(k) if isinstance(node, dict) else None
        if child is None:
            child = node[k] = {}
        elif isinstance(child, list) and ov.keys[i + 1].isdigit():
            raise UserError(f"override `{ov.text}`: list items cannot be set by index: give the whole list "
                            f"(`{'.'.join(ov.keys[: i + 1])}=[...]`) or edit the recipe")
        elif not isinstance(child, dict):
            where = ".".join(ov.keys[: i + 1])
            raise UserError(f"override `{ov.text}`: `{where}` is a value, not a section, so it has no `{ov.keys[i + 1]}`")
        node = child
    node[ov.keys[-1]] = ov.value
