"""pytest plugin (``-p tests.support.interpreted``): the sidecar's compiled modules are
imported from their sources even where extension modules were built, so the suite can
check the interpreted data path that a machine without a C compiler runs."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from tests.native.support import load_setup


def module_names() -> frozenset[str]:
    names = set()
    for rel in load_setup().NATIVE_MODULES:
        dotted = rel.removesuffix(".py").replace("/", ".")
        names.add(dotted.removesuffix(".__init__"))
    return frozenset(names)


class SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds the listed modules' ``.py`` files before the path finder sees the ``.so``."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path if path is not None else sys.path:
            package = Path(entry, leaf, "__init__.py")
            if package.is_file():
                return importlib.util.spec_from_file_location(
                    fullname, package, submodule_search_locations=[str(package.parent)]
                )
            module = Path(entry, leaf + ".py")
            if module.is_file():
                return importlib.util.spec_from_file_location(fullname, module)
        return None


if any(name in sys.modules for name in module_names()):
    raise RuntimeError("tests.support.interpreted must load before the sidecar is imported")
sys.meta_path.insert(0, SourcesFirst(module_names()))


def pytest_configure(config: pytest.Config) -> None:
    from sidecar.native import data_path

    if data_path() != "interpreted":
        raise pytest.UsageError("tests.support.interpreted: the compiled modules still load")
