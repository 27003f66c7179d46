"""The layer rule of docs/architecture.md, read from the source: comical (CLI) -> tuning -> distributed -> data_io, and
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
# Module-level third-party imports the engine may make (docs/architecture.md: the GPU image has no polars or bed-reader).
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
    """Each command parses its flags into a config and calls one library function (docs/architecture.md)."""
    tree = ast.parse((ROOT / "comical" / "cli.py").read_text())
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in tree.body
            if isinstance(f, ast.FunctionDef) and f.name != "_parser" and f.end_lineno - f.lineno + 1 > 32]
    assert not long, long


def _task_name_tests(source: str, names: set[str]) -> list[int]:
    """Lines of `source` that compare something with a task's name (==, !=, in, startswith)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "startswith", "endswith"):
            sides = node.args
        else:
            continue
        # the compared values themselves, or the items of a compared tuple/list/set (not subscripts: m["gemcont"])
        items = [n for side in sides for n in (side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side])]
        strings = [n.value for n in items if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        if any(s in names or (s and any(name.startswith(s) for name in names) and s.endswith("-")) for s in strings):
            lines.append(node.lineno)
    return lines


def test_only_the_registry_and_the_task_modules_compare_task_names():
    """Behaviour that depends on the model comes from its registry row (pipelines/registry.py) or its task class,
    never from `if task == "gemcont"` elsewhere: adding a paper is a task file, a package and a row."""
    from comical.distributed.tasks import TASKS
    from comical.pipelines.registry import MODELS

    assert set(MODELS) == set(TASKS)  # every task has its row, and every row its task
    names = set(TASKS)
    assert _task_name_tests('if spec["task"] == "gemcont": pass\nx = t in ("toy", "heads")\n'
                            'y = name.startswith("momentum-")', names) == [1, 2, 3]  # the check can fail
    wrong = []
    for layer in ("comical", *ALLOWED):
        for path in sorted((ROOT / layer).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] == ("distributed", "tasks") or relative == Path("pipelines/registry.py"):
                continue
            wrong += [f"{relative}:{line}" for line in _task_name_tests(path.read_text(), names)]
    assert not wrong, wrong


def test_every_module_the_package_imports_is_a_runtime_dependency():
    """A plain `pip install` (no [dev]) must run every command: each third-party module imported anywhere in the
    package belongs to a distribution in pyproject's `dependencies` (or to one of theirs, as nilearn brings nibabel).
    Issue 33: statsmodels, which `riskscore` imports, was in the dev extra only."""
    import re
    import sys
    import tomllib
    from importlib.metadata import packages_distributions, requires

    declared = {re.split(r"[\[<>=!~; ]", d)[0].lower().replace("_", "-")
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    reachable, todo = set(), list(declared)
    while todo:  # the declared distributions and everything they require
        name = todo.pop()
        if name in reachable:
            continue
        reachable.add(name)
        try:
            todo += [re.split(r"[\[<>=!~; (]", r)[0].lower().replace("_", "-") for r in requires(name) or []
                     if "extra ==" not in r]
        except Exception:  # not installed here: nothing more to follow
            pass
    owners = packages_distributions()
    own = {"comical", "data_io", "distributed", "pipelines", "tuning"}
    missing = set()
    for layer in ("comical", "data_io", "distributed", "pipelines", "tuning"):
        for path in (ROOT / layer).rglob("*.py"):
            for module, _ in _imports(path):
                top = module.split(":")[0].split(".")[0]
                if top in own or top in sys.stdlib_module_names or top == "__future__":
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                if not dists & reachable:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, sorted(missing)
