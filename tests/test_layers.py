"""The layer rule of DESIGN.md, read from the source: comical (CLI) -> tuning -> distributed -> data_io, and
pipelines -> data_io (+ distributed); nothing below the CLI imports the `comical` package but its version; the
engine imports only what every Ray worker (and the lent GPU machine) has at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "data_io": {"data_io"},
    "distributed": {"data_io", "distributed"},
    "pipelines": {"data_io", "distributed", "pipelines"},
    "tuning": {"data_io", "distributed", "tuning"},
}
# Module-level third-party imports the engine may make (DESIGN.md: the GPU image has no polars or bed-reader).
ENGINE_IMPORTS = {"torch", "ray", "deepspeed", "numpy", "pyarrow", "safetensors", "yaml"}


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [alias.name for alias in node.names]
            found.append((node.module if node.module != "comical" else f"comical:{','.join(names)}", node.lineno))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_downward(layer):
    wrong = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for module, line in _imports(path):
            if module == "comical:__version__":
                continue
            parts = module.split(".")
            if parts[0].startswith("comical") and (len(parts) < 2 or parts[1] not in ALLOWED[layer]):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, wrong


def test_engine_imports_only_what_a_ray_worker_has():
    wrong = []
    for path in sorted((ROOT / "distributed").rglob("*.py")):
        for module, line in _imports(path, top_level_only=True):
            root = module.split(".")[0]
            if root in ("__future__", "comical") or root in ENGINE_IMPORTS or root in _stdlib():
                continue
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module} at import time")
    assert not wrong, wrong


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)


def test_cli_commands_are_thin():
    """Each command parses its flags into a config and calls one library function (DESIGN.md)."""
    tree = ast.parse((ROOT / "comical" / "cli.py").read_text())
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in tree.body
            if isinstance(f, ast.FunctionDef) and f.name != "_parser" and f.end_lineno - f.lineno + 1 > 32]
    assert not long, long
