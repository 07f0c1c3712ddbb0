"""The shape of the house: dependencies run downhill, no import circles, no oversized modules.

``lopa_fed/`` is the ground floor: it imports neither Flower nor ONNX, nor the packages
that stand on it (``clients/``, ``server/``, ``export/``), directly, through importlib or
by a module-path string. ``server/`` and ``clients/`` share the federation contract in
``lopa_fed/`` and never import each other. Every runtime import counts, module-level or
inside a function; only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lopa_fed", "clients", "server", "export")
#: package → top-level names it must never import.
FORBIDDEN = {
    "lopa_fed": {"flwr", "flwr_datasets", "onnx", "onnxruntime", "onnxscript", "clients", "server", "export"},
    "server": {"clients", "onnx", "onnxruntime"},
    "clients": {"server", "export", "onnx", "onnxruntime"},
    "export": {"flwr", "flwr_datasets", "clients", "server"},
}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _runtime_nodes(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if not _is_type_checking(child):
                stack.append(child)
                yield child


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of the modules ``name`` imports at run time (relative imports resolved)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES}
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("pkg", PACKAGES)
def test_dependencies_run_downhill(pkg):
    bad = sorted(
        f"{mod} imports {dep}"
        for mod, deps in GRAPH.items()
        if mod.split(".")[0] == pkg
        for dep in deps
        if dep.split(".")[0] in FORBIDDEN[pkg]
    )
    assert not bad, bad


def test_core_has_no_upward_import_strings():
    pattern = re.compile(r"""import_module\(\s*["'](clients|server|export)\b|["'](clients|server|export)\.[a-z_]+["']""")
    hits = [str(p.relative_to(ROOT)) for n, p in MODULES.items() if n.startswith("lopa_fed") and pattern.search(p.read_text())]
    assert not hits, hits


def test_no_import_circles():
    internal = {m: {d for d in deps if d in MODULES and d != m} for m, deps in GRAPH.items()}
    # a package's __init__ is imported before any of its submodules: count that edge too
    for m in MODULES:
        parent = m.rsplit(".", 1)[0] if "." in m else None
        if parent in MODULES and parent != m:
            internal[m].add(parent)
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(internal[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(internal):
        if m not in state:
            visit(m)
    # a package importing its own submodules from __init__ is how packages work, not a circle
    real = [c for c in cycles if not all(x == c[0] or x.startswith(c[0] + ".") or c[0].startswith(x + ".") for x in c)]
    assert not real, [" -> ".join(c) for c in real]


def test_no_oversized_source_files():
    big = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: k for n, k in big.items() if k > MAX_LINES}, "split these along their stages"
