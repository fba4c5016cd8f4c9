"""Find import cycles among volseg's modules, reading the source (nothing is imported).

Every import counts, wherever it stands: at module top, inside a function (a deferred import hides
a cycle rather than removing it), and any string literal that spells a module's full dotted name
(what ``importlib.import_module`` is given, directly or from a registry tuple).
Modules are nodes; ``import a.b.c`` and ``from a.b import c`` are edges to the module they name
(``c`` when it is a submodule, else ``a.b``).  A cycle is a strongly connected component with more
than one module, or a module importing itself.

    python data_scripts/check_imports.py [PACKAGE_DIR]      # exit 1 and list the cycles if any
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file for every module of the package rooted at ``package_dir``."""
    root = package_dir.parent
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_extension(package: str, name: str, root: Path) -> bool:
    """Whether ``package.name`` is a compiled extension module (its C source or a built library)."""
    folder = root.joinpath(*package.split("."))
    return folder.joinpath(name + ".c").exists() or any(folder.glob(name + ".*.so"))


def imports_of(module: str, path: Path, known: dict[str, Path], root: Path) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()

    def add(name: str) -> None:
        target = _resolve(name, known)
        if target is not None and target != module:
            found.add(target)
        elif target == module and name == module:
            found.add(module)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = ".".join(base[: len(base) - node.level + 1])
                origin = f"{stem}.{node.module}" if node.module else stem
            else:
                origin = node.module or ""
            for alias in node.names:
                full = f"{origin}.{alias.name}"
                if full in known:
                    add(full)
                elif not _is_extension(origin, alias.name, root):
                    add(origin)  # a name defined in ``origin``: it must be initialised first
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            add(node.value)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    known = module_names(package_dir)
    return {m: imports_of(m, p, known, package_dir.parent) for m, p in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, plus self-imports (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "volseg"
    graph = import_graph(package_dir)
    found = cycles(graph)
    for component in found:
        members = set(component)
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
        print(f"cycle of {len(component)} modules: " + "; ".join(edges))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
