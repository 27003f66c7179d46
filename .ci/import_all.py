"""Import every module of the installed package: run in a venv made with `pip install .` (no [dev] extra), it
fails on any module that needs a package `dependencies` does not list (issue 33)."""

import importlib
import pkgutil
import sys

import comical

names = [m.name for m in pkgutil.walk_packages(comical.__path__, "comical.")
         if not m.name.endswith("__main__")]  # that one runs the CLI
for name in names:
    importlib.import_module(name)
assert len(names) > 60, names
print(f"imported {len(names)} modules of {comical.__file__} with {sys.executable}")
