"""The package's import graph: no cycles, and every import points down the layers (DESIGN.md §7, rule 15).

The graph is read from the source with :mod:`ast`, function-level imports included, so an import
moved into a function to hide a cycle is still an arrow here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import semmae

PACKAGE = Path(semmae.__file__).parent

# Bottom to top. A module belongs to the longest prefix listed; imports within one layer are
# allowed as long as they make no cycle.
LAYERS: dict[str, int] = {
    "semmae": 0,  # the version string only
    "semmae.errors": 0,
    "semmae.config": 0,
    "semmae.config_checks": 0,
    "semmae.registry": 0,
    "semmae.encoder_spec": 0,
    "semmae.file_kinds": 0,
    "semmae.atomic": 0,
    "semmae.names": 0,
    "semmae.config_sections": 0,
    "semmae.config_parts": 0,
    "semmae.config_eval": 0,
    "semmae.runtime": 1,
    "semmae.layers": 1,
    "semmae.data": 2,
    "semmae.masking": 3,
    "semmae.models": 4,
    "semmae.parts": 4,
    "semmae.engine": 5,
    "semmae.eval": 6,
    "semmae.viz": 6,
    "semmae.train": 7,
    "semmae.pipeline": 8,
    "semmae.cli": 9,
    "semmae.__main__": 10,
}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (a package directory)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth of its code."""
    files = module_files(root)

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = known(target) if target.split(".")[0] == root.name else None
                if found and found != name:
                    graph[name].add(found)
    return graph


def layer_of(module: str, layers: dict[str, int]) -> int:
    """The layer of the longest prefix of ``module`` in ``layers``."""
    prefixes = [p for p in layers if module == p or module.startswith(p + ".")]
    assert prefixes, f"{module} is in no layer: add it to LAYERS"
    return layers[max(prefixes, key=len)]


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """``a -> b`` for every import from a lower layer to a higher one."""
    return sorted(
        f"{a} ({layer_of(a, layers)}) -> {b} ({layer_of(b, layers)})"
        for a, targets in graph.items()
        for b in targets
        if layer_of(b, layers) > layer_of(a, layers)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph(PACKAGE)) == []


def test_every_import_points_down_the_layers() -> None:
    assert upward_imports(import_graph(PACKAGE), LAYERS) == []


def test_the_walk_sees_the_graph(tmp_path: Path) -> None:
    """The checks fire: a relative import, a function-level import, a cycle, an upward arrow."""
    pkg = tmp_path / "semmae"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from semmae.data import loader\n")
    (pkg / "data" / "__init__.py").write_text("from .loader import load\n")
    (pkg / "data" / "loader.py").write_text("from semmae.data import datasets\n")
    (pkg / "data" / "datasets.py").write_text("from semmae.data.loader import load\n")
    graph = import_graph(pkg)
    assert graph["semmae.data"] == {"semmae.data.loader"}
    assert graph["semmae.config"] == {"semmae.data.loader"}
    assert cycles(graph) == [["semmae.data.datasets", "semmae.data.loader"]]
    assert upward_imports(graph, LAYERS) == ["semmae.config (0) -> semmae.data.loader (2)"]


def test_the_package_is_walked_whole() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 50
    assert "semmae.engine.loop" in graph["semmae.train.pretrain"]
