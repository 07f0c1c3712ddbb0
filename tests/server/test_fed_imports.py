"""Dependencies run downhill: ``server/`` never imports ``clients/``, the contract imports no Flower."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    """Top-level module names imported by ``path`` (absolute imports, and strings passed to importlib)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            names |= {a.value.split(".")[0] for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return names


def test_server_imports_no_clients_module():
    files = sorted((ROOT / "server").rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): "clients" for f in files if "clients" in _imports(f)}
    assert not offenders
    # grep-style too: no import line names clients/ (also inside functions or strings run later)
    pattern = re.compile(r"^\s*(from\s+clients\b|import\s+clients\b)|import_module\(\s*[\"']clients", re.M)
    assert not [str(f) for f in files if pattern.search(f.read_text())]


def test_clients_import_no_server_module():
    offenders = [str(f.relative_to(ROOT)) for f in sorted((ROOT / "clients").rglob("*.py")) if "server" in _imports(f)]
    assert not offenders


def test_contract_imports_no_flower_and_nothing_above_it():
    files = sorted((ROOT / "lopa_fed" / "federation").rglob("*.py"))
    assert len(files) >= 5
    for f in files:
        assert not _imports(f) & {"flwr", "flwr_datasets", "clients", "server", "export", "onnx"}, f
