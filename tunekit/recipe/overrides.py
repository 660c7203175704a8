"""Command-line overrides: `trainer.learning_rate=1e-4` parsed and applied to the recipe's data before validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from tunekit.errors import UserError


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
            raise UserError(f"override `{ov.text}`: list items cannot be overridden by index; edit the recipe")
        elif not isinstance(child, dict):
            where = ".".join(ov.keys[: i + 1])
            raise UserError(f"override `{ov.text}`: `{where}` is a value, not a section, so it has no `{ov.keys[i + 1]}`")
        node = child
    node[ov.keys[-1]] = ov.value
