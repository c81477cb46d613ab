"""The package's import graph: no cycles between lljax's modules, and no module imports an underscore
name from another (modules use each other's public surface only).

The graph is read from the source with ``ast`` (every import, including those inside functions), so
the test sees what a reader sees, not what happens to be loaded.
"""

import ast
from pathlib import Path

import lljax

PACKAGE = Path(lljax.__file__).resolve().parent
# The compiled extension is the kernels package's own implementation, not a module of lljax's Python code.
EXTENSIONS = {"lljax.solve.kernels._newton"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports(name: str, path: Path):
    """``(imported module, imported name or None)`` for every import statement of a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            source = resolve(name, path.name == "__init__.py", node.level, node.module)
            for alias in node.names:
                yield source, alias.name


def lljax_edges():
    known = modules()
    edges = {name: set() for name in known}
    private = []
    for name, path in known.items():
        for source, imported in imports(name, path):
            if not (source == "lljax" or source.startswith("lljax.")):
                continue
            target = source
            if imported is not None and f"{source}.{imported}" in known:
                target = f"{source}.{imported}"  # `from lljax.solve import kernels`: the module itself
            elif imported is not None and imported.startswith("_") and not imported.startswith("__") \
                    and f"{source}.{imported}" not in EXTENSIONS:
                private.append(f"{name} imports {imported} from {source}")
            if any(part.startswith("_") and not part.startswith("__") for part in target.split(".")) \
                    and target not in EXTENSIONS:
                private.append(f"{name} imports the private module {target}")
            if target in known and target != name:
                edges[name].add(target)
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    edges, _ = lljax_edges()
    assert "lljax.solve.registry" in edges["lljax.model.random_effect"]
    assert "lljax.solve.kernels" in edges["lljax.solve.registry"]  # `from lljax.solve import kernels`
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_no_import_cycles():
    edges, _ = lljax_edges()
    # The package's __init__ re-exports the public surface: a module importing `lljax` itself would
    # close a cycle through it, and is reported like any other.
    assert cycles(edges) == []


def test_no_module_imports_an_underscore_name_from_another():
    _, private = lljax_edges()
    assert private == []


def test_the_core_layers_import_only_those_below_them():
    """docs/design.md's import order for the engine: ``solve`` imports no other layer, ``state`` only ``data`` and
    ``solve``, ``rounds`` only those three (``version`` is a leaf anyone may import)."""
    edges, _ = lljax_edges()
    allowed = {
        "solve": set(),
        "state": {"data", "solve"},
        "rounds": {"data", "solve", "state"},
    }
    layer = lambda module: module.split(".")[1] if module.count(".") >= 1 else ""  # noqa: E731
    found = {
        (source, target)
        for source, targets in edges.items() if layer(source) in allowed
        for target in targets
        if layer(target) not in allowed[layer(source)] | {layer(source), "version"}
    }
    assert found == set()
    assert ("lljax.state.store", "lljax.solve.kernels") in {(s, t) for s, ts in edges.items() for t in ts}
