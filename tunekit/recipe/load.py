"""Load a recipe: YAML with source positions, dotted-key overrides (`overrides.py`), then validation whose
errors point at the source (`errors.py`)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tunekit.errors import UserError
from tunekit.paths import decode_utf8
from tunekit.recipe.errors import format_validation_error
from tunekit.recipe.overrides import apply_override, parse_override, surprising_number
from tunekit.recipe.schema import Recipe

MAX_VALUES = 100_000  # a recipe has hundreds; more means aliases (*name) expanding into a bomb


def read_yaml(path: Path) -> tuple[dict, yaml.Node | None]:
    """Return the recipe's data and its YAML node tree (for positions)."""
    path = path.expanduser()
    if not path.exists():
        raise UserError(f"recipe not found: {path}")
    if path.is_dir():
        raise UserError(f"recipe path is a directory, not a YAML file: {path}")
    text = decode_utf8(path.read_bytes(), str(path))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        check_nodes(node, path)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = e.problem or e.context
        tab = "'\\t'" in str(problem)  # PyYAML: "found character '\t' that cannot start any token"
        raise UserError(f"{where}: malformed YAML: {problem}" + ("; indent with spaces: YAML does not allow tabs"
                                                                  if tab else "")) from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML: {e}") from None
    except RecursionError:
        raise UserError(f"{path}: the YAML is nested too deeply to be a recipe") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}:1:1: a recipe must be a mapping of sections (model, data, ...), found {type(data).__name__}")
    return data, node


def check_nodes(root: yaml.Node | None, path: Path) -> None:
    """Duplicate keys in one mapping (YAML says keys are unique; PyYAML keeps the last) and alias expansion
    past MAX_VALUES are errors. Aliases share nodes, so sizes are counted once per node (no expansion)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1  # a node that contains itself (recursive alias) counts once
            if isinstance(node, yaml.MappingNode):
                _check_duplicates(node, path)
                sizes[id(node)] = 1 + sum(size(k) + size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                sizes[id(node)] = 1 + sum(size(v) for v in node.value)
            elif node.style is None and (why := surprising_number(node.value)):
                m = node.start_mark
                raise UserError(f"{path}:{m.line + 1}:{m.column + 1}: `{node.value}`: {why}, or quote it "
                                f"(\"{node.value}\") if it is a text")
        return sizes[id(node)]

    if root is None or size(root) <= MAX_VALUES:
        return
    keys, node = [], root
    while isinstance(node, yaml.MappingNode):  # the deepest key under which the expansion passes the limit
        big = [(k, v) for k, v in node.value if size(v) > MAX_VALUES]
        if not big:
            break
        (k, node), = big[:1]
        keys.append(str(k.value))
    m = node.start_mark
    raise UserError(f"{path}:{m.line + 1}:{m.column + 1}: {'.'.join(keys) or '(recipe)'}: aliases (*name) expand "
                    f"this value to {size(node):,} values, more than a recipe can hold ({MAX_VALUES:,}); "
                    "remove the nested aliases")


def _check_duplicates(node: yaml.MappingNode, path: Path) -> None:
    seen: dict[str, yaml.Node] = {}
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode):
            continue
        if k.value in seen:
            first, again = seen[k.value].start_mark, k.start_mark
            fix = "merge several in one: `<<: [*a, *b]` (the first wins)" if k.value == "<<" else "keep one of them"
            raise UserError(f"{path}:{again.line + 1}:{again.column + 1}: duplicate key `{k.value}` (first at line "
                            f"{first.line + 1}); {fix}")
        seen[k.value] = k


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = Path(path)
    data, node = read_yaml(path)
    if not data:
        raise UserError(f"{path}: the recipe is empty (it needs model, data, method, trainer and output); start from "
                        "`tunekit init my.yaml --model ... --data ...` or `tunekit recipes copy quickstart`")
    parsed = [parse_override(o) for o in overrides]
    for ov in parsed:
        apply_override(data, ov)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, path, node, parsed)) from None
