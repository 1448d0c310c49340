"""No import cycles in sale_ray (DESIGN.md), counting every import: module-level ones and the lazy
ones inside functions (and under ``if TYPE_CHECKING``) alike. A lazy import that closes a cycle
hides a dependency going the wrong way; the fix is to move the name to the module it belongs to.

Read from the source with :mod:`ast`: nothing is imported, so no Ray and no optional extras."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "sale_ray"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``pkg`` for its __init__)."""
    mods = {}
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _absolute(mods: dict[str, Path], current: str, level: int, module: str | None) -> str:
    """The absolute name a ``from <level dots><module> import …`` in ``current`` refers to."""
    if level == 0:
        return module or ""
    package = current.split(".")
    if mods[current].name != "__init__.py":
        package = package[:-1]  # a plain module's package is its parent
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join(package + ([module] if module else []))


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its source."""
    mods = _modules(root)
    graph = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.ImportFrom):
                base = _absolute(mods, name, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"  # `from . import x` imports the module x
                    deps.add(sub if sub in mods else base)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\nfrom ..b import f\n")
    g = import_graph(pkg)
    assert g["pkg.a"] == {"pkg.b"} and g["pkg.b"] == {"pkg.sub.c"}
    assert g["pkg.sub"] == {"pkg.sub.c"} and g["pkg.sub.c"] == {"pkg.a", "pkg.b"}
    assert cycles(g) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_sale_ray_has_no_import_cycles_counting_lazy_imports():
    graph = import_graph()
    assert "sale_ray.evaluation.matrix" in graph  # the package was found
    found = cycles(graph)
    detail = [
        {m: sorted(graph[m] & set(comp)) for m in comp}  # each module's edges inside the cycle
        for comp in found
    ]
    assert not found, f"import cycles (module -> what it imports within the cycle): {detail}"
