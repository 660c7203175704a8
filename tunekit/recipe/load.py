"""Load a recipe: YAML with source positions, dotted-key overrides (`overrides.py`), then validation whose
errors point at the source (`errors.py`)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tunekit.errors import UserError
from tunekit.recipe.errors import format_validation_error
from tunekit.recipe.overrides import apply_override, parse_override
from tunekit.recipe.schema import Recipe


def read_yaml(path: Path) -> tuple[dict, yaml.Node | None]:
    """Return the recipe's data and its YAML node tree (for positions)."""
    if not path.exists():
        raise UserError(f"recipe not found: {path}")
    if path.is_dir():
        raise UserError(f"recipe path is a directory, not a YAML file: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: malformed YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}:1:1: a recipe must be a mapping of sections (model, data, ...), found {type(data).__name__}")
    return data, node


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = Path(path)
    data, node = read_yaml(path)
    parsed = [parse_override(o) for o in overrides]
    for ov in parsed:
        apply_override(data, ov)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, path, node, parsed)) from None
