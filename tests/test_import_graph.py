"""slmkit's modules import each other without a cycle.

The graph is read from the source (``ast``), not from ``sys.modules``: an edge
``a -> b`` for every module-level ``import`` of ``b`` in ``a`` (also inside a
top-level ``if``/``try``), and ``a -> p`` for each package ``p`` above ``b``
that ``a`` is not inside (importing ``p.b`` runs ``p/__init__.py`` first).
Imports inside functions are left out: each one needs a reason (an optional
heavy dependency), and the lower the count the more of the graph this test sees.
"""
import ast
import importlib.util
from pathlib import Path

# found without importing slmkit: a cycle may keep it from importing at all
PACKAGE = Path(importlib.util.find_spec("slmkit").submodule_search_locations[0])


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module under ``root``."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = [root.name, *f.relative_to(root).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _top_level(tree: ast.Module):
    """Import statements that run when the module is imported."""
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)):
            yield from (n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))


def _targets(node, name: str, is_pkg: bool, mods: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        here = here[:len(here) - (node.level - 1)]
        base = ".".join(here + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the same top package its module-level imports run."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        edges = set()
        for node in _top_level(ast.parse(path.read_text(), str(path))):
            for t in _targets(node, name, is_pkg, mods):
                while t in mods or "." in t:
                    if t in mods and t != name and not name.startswith(t + "."):
                        edges.add(t)
                    t = t.rpartition(".")[0]
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None."""
    state: dict[str, int] = {}            # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_slmkit_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 100 and "slmkit.models.io" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_ground_floor_does_not_reach_up():
    """models/ (loading, the packed weight format) and export/ import no compression code."""
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith(("slmkit.models", "slmkit.export")):
            assert not [e for e in edges if e.startswith("slmkit.compress")], name


def test_a_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom .sub.b import f\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    assert find_cycle(import_graph(pkg)) is None       # a function-level import is no edge
    (pkg / "sub" / "b.py").write_text("try:\n    from .. import a\nexcept ImportError:\n    a = None\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from ..a import f\n")   # runs before pkg.sub.b
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub", "pkg.a"]
