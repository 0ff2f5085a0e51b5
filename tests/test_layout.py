"""The package's layering: no import cycle (counting imports inside functions, which Python
only runs late and so never complains about, and those under TYPE_CHECKING, which a reader
follows all the same) and no library module importing an app."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "icam"
APPS = {"icam.cli", "icam.demo", "icam.comparison", "icam.__main__"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(tree: ast.AST):
    """Every import statement: at the top, inside functions and under ``if TYPE_CHECKING:``."""
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            for alias in node.names:  # `from . import losses` imports a module; `from .x import f`, module x
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions_and_for_types():
    graph = import_graph()
    assert "icam.explain" in graph["icam.inference"]  # only under TYPE_CHECKING there
    assert "icam.losses" in graph["icam.train"]  # `from . import losses`
    hidden = "def f():\n    from . import a\nif TYPE_CHECKING:\n    from . import b\n"
    assert sorted(n.names[0].name for n in _imports(ast.parse(hidden))) == ["a", "b"]


def test_no_import_cycle_in_the_package():
    assert _cycles(import_graph()) == []


def test_the_library_never_imports_the_apps():
    graph = import_graph()
    offenders = {name: sorted(targets & APPS) for name, targets in graph.items()
                 if name not in APPS and targets & APPS}
    assert offenders == {}
