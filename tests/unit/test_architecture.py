"""The layout keeps its shape: no import cycle, short functions, a typed recipe, the CLI and pipeline on top.

These read tunekit's source (ast), so they fail on the change that breaks the rule, naming the place.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "tunekit"
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _resolve(name: str) -> str | None:
    """The tunekit module an imported name lives in (`tunekit.launch.runtime.rank` -> `tunekit.launch.runtime`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """tunekit modules `module` imports anywhere (module level and inside functions; type-checking-only aside)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        for n in names:
            target = _resolve(n) if n.startswith("tunekit") else None
            if target and target != module and target != "tunekit":
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = {m: imports_of(m) for m in MODULES}
    assert sum(len(v) for v in graph.values()) > 150  # the walk really sees the package's imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_only_the_cli_imports_the_pipeline_and_nothing_imports_the_cli() -> None:
    importers = {m for m in MODULES if "tunekit.pipeline" in imports_of(m)}
    assert importers == {"tunekit.cli"}
    assert not [m for m in MODULES if "tunekit.cli" in imports_of(m) and m != "tunekit.__main__"]


def test_stage_schemas_import_no_stage_code() -> None:
    """A section's schema (and the recipe built from them) never imports model/data/trainer code or the CLI."""
    allowed_prefixes = ("tunekit.errors", "tunekit.paths", "tunekit.recipe", "tunekit.launch", "tunekit.methods",
                        "tunekit.trainers", "tunekit.model.schema", "tunekit.data.schema", "tunekit.eval.schema")
    for m in MODULES:
        if m.endswith("schema") or m == "tunekit.recipe.base":
            for target in imports_of(m):
                is_schema = target.endswith(("schema", ".base", ".rules", ".engines", ".runtime")) or \
                    target in ("tunekit.errors", "tunekit.paths", "tunekit.methods")
                assert target.startswith(allowed_prefixes) and is_schema, f"{m} imports {target}"


def test_no_function_is_longer_than_sixty_lines() -> None:
    long = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{m}.{node.name}: {lines} lines")
    assert not long, long


def test_the_recipe_is_typed_where_it_is_passed() -> None:
    untyped = [f"{m}:{i}" for m, path in MODULES.items()
               for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "recipe: Any" in line]
    assert not untyped, untyped
