"""Dependencies point one way: CLIs on top of core modules, no CLI imports another, no cycles.

Read from the source (ast), so imports inside functions count too; imports under
`if TYPE_CHECKING:` do not (they never run). A CLI is a module with an `if __name__ ==
"__main__":` guard, or every module of a package that has a `__main__.py`.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
    for p in sorted((ROOT / "petseg").rglob("*.py"))
}
CLIS = {  # what the README documents as commands
    "petseg.train",
    "petseg.evaluate",
    "petseg.predict",
    "petseg.export",
    "petseg.summary",
    "petseg.bench",
    "petseg.report",
    "petseg.data.check",
    "petseg.gpucheck",
}


def cli_of(module: str) -> str | None:
    """The CLI a module belongs to (its package's, for a package with __main__.py), or None."""
    parts = module.split(".")
    for n in range(1, len(parts) + 1):
        prefix = ".".join(parts[:n])
        path = FILES.get(prefix)
        if path is None:
            continue
        if path.name == "__init__.py" and (path.parent / "__main__.py").is_file():
            return prefix
        if n == len(parts) and 'if __name__ == "__main__":' in path.read_text():
            return prefix
    return None


def type_checking_only(tree: ast.Module) -> set[ast.AST]:
    nodes: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            nodes.update(n for stmt in node.body for n in ast.walk(stmt))
    return nodes


def resolve(name: str) -> str | None:
    """The petseg module `name` loads: itself, or its longest prefix that is a module."""
    while name and name not in FILES:
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(module: str) -> frozenset[str]:
    """The petseg modules `module` imports, anywhere in its source, less its own packages."""
    path = FILES[module]
    tree = ast.parse(path.read_text(), str(path))
    skip = type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(m for n in names if n.startswith("petseg") and (m := resolve(n)))
    # A module's own packages are loaded before it runs: importing them is never a cycle.
    ancestors = {".".join(module.split(".")[:n]) for n in range(1, module.count(".") + 1)}
    return frozenset(found - ancestors - {module})


def edges() -> list[tuple[str, str]]:
    return [(a, b) for a in FILES for b in sorted(imports(a))]


def test_every_documented_cli_is_found() -> None:
    assert {cli_of(m) for m in FILES} - {None} == CLIS


def test_no_cli_imports_another_cli() -> None:
    crossings = [
        f"{a} -> {b}"
        for a, b in edges()
        if cli_of(a) is not None and cli_of(b) is not None and cli_of(a) != cli_of(b)
    ]
    assert not crossings, "move the shared piece to a core module:\n" + "\n".join(crossings)


def test_no_core_module_imports_a_cli() -> None:
    upward = [f"{a} -> {b}" for a, b in edges() if cli_of(a) is None and cli_of(b) is not None]
    assert not upward, "a core module must not depend on a command:\n" + "\n".join(upward)


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node: the import cycles."""
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
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": frozenset("b"), "b": frozenset("c"), "c": frozenset("a"), "d": frozenset("a")}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": frozenset("b"), "b": frozenset()}) == []


def test_no_import_cycle() -> None:
    assert cycles({m: imports(m) for m in FILES}) == []


def test_layout_is_a_leaf() -> None:
    """petseg.data.layout spells the dataset's layout for everyone, so it depends on no one."""
    tree = ast.parse(FILES["petseg.data.layout"].read_text())
    names = [
        node.module or "." if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert [n for n in names if n.startswith(("petseg", "."))] == []


def test_training_path_does_not_import_the_data_check() -> None:
    for module in ("petseg.data.cache", "petseg.data.datamodule"):
        assert "petseg.data.check" not in imports(module)
