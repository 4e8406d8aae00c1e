"""The package's modules import each other in one direction: no cycles, imports inside functions included.

The graph is read from the source with ``ast``: every ``import`` / ``from ... import`` of an
``hf_soup`` module, wherever it is written (module level or inside a function), plus the
implicit import of the parent packages of what it imports. Imports under ``if TYPE_CHECKING:`` are
annotations only and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hf_soup

PACKAGE_DIR = Path(hf_soup.__file__).parent


def module_names() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every ``.py`` file of the package."""
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ["hf_soup", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, package: str) -> set[str]:
    """Absolute names of everything ``tree`` imports (``a.b`` and ``a.b.name`` for ``from a.b import name``)."""
    names: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (explicitly, or as the parent package of one)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets = {n for n in imported_names(ast.parse(path.read_text(), str(path)), package) if n in modules}
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for target in list(targets):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            parent = target.rpartition(".")[0]
            while parent and parent not in ancestors and parent != name:
                targets.add(parent)
                parent = parent.rpartition(".")[0]
        graph[name] = targets - ancestors - {name}  # ancestors run before the module itself
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "hf_soup.output.report" in graph["hf_soup.output.card"]  # written inside write_card()
    assert "hf_soup.ingredients" in graph["hf_soup.adapters.bases"]  # the parent package of what it imports
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
