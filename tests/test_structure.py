"""The package's structure, kept: no module reaches into another object's underscored members
(but the ones listed, each explained where it stands), no import circle of more than two
modules (imports under ``if TYPE_CHECKING:`` count: they tie modules together for a reader as
much as any), the hot-path modules in none, and no module over ``MAX_LINES`` lines."""

from __future__ import annotations

import ast
from pathlib import Path

import trio_wshandler

PACKAGE = Path(trio_wshandler.__file__).parent

#: ``name._attr`` reaches allowed, by module: where the package crosses from a user's object to
#: its internals (the comments at each say why)
ALLOWED_REACHES = {
    ("_connection", "handler._hub"),  # the public constructor takes the handler
    ("_handler", "connection._core"),  # get_connection() returns the user's object
}
MAX_CIRCLE = 2
HOT_PATH = {"_reader", "_flusher", "_send_queue", "_protocol", "codec"}
MAX_LINES = 450


def _modules() -> dict[str, ast.Module]:
    return {
        path.stem: ast.parse(path.read_text())
        for path in sorted(PACKAGE.glob("*.py"))
        if path.stem != "__init__"
    }


def _reaches(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(ast.unparse(node))
    return found


def _imports(tree: ast.Module, names: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found & names


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module."""
    reach = {m: set(graph[m]) for m in graph}
    changed = True
    while changed:  # transitive closure: small graph, simple and obviously right
        changed = False
        for m in reach:
            more = set().union(*(reach[n] for n in reach[m])) - reach[m]
            if more:
                reach[m] |= more
                changed = True
    circles = {frozenset({m} | {n for n in reach[m] if m in reach[n]}) for m in graph}
    return [set(c) for c in circles if len(c) > 1]


def test_no_reaches_into_other_objects_privates() -> None:
    reaches = {(name, reach) for name, tree in _modules().items() for reach in _reaches(tree)}
    assert reaches == ALLOWED_REACHES


def test_no_import_circle_of_more_than_two_modules_and_none_on_the_hot_path() -> None:
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) - {name} for name, tree in modules.items()}
    circles = _circles(graph)
    assert all(len(circle) <= MAX_CIRCLE for circle in circles), circles
    assert not any(circle & HOT_PATH for circle in circles), circles


def test_no_module_over_the_line_limit() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= MAX_LINES, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
