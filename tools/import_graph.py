"""The import graph of the project's own modules (imports inside functions included): modules, edges, the longest
chain, and any cycle. ``python tools/import_graph.py [ROOT]`` (default: this checkout)."""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

PACKAGES = ("mlflow_mnist", "analysis")


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def edges(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t for t in subs if t in found] + ([node.module] if any(t not in found for t in subs) else [])
            graph[name] |= {t for t in targets if t in found and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return found


def longest_chain(graph: dict[str, set[str]]) -> tuple[str, ...]:
    @cache
    def chain(node: str) -> tuple[str, ...]:
        return (node, *max((chain(t) for t in graph[node]), key=len, default=()))

    return max((chain(node) for node in graph), key=len)


def main(root: Path) -> None:
    found = modules(root)
    graph = edges(found)
    loops = cycles(graph)
    print(f"{len(found)} modules, {sum(map(len, graph.values()))} import edges, cycles: {loops or 'none'}")
    if not loops:
        chain = longest_chain(graph)
        print(f"longest chain: {len(chain)} modules: {' -> '.join(chain)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
