"""setup.py and scripts/native.py, loaded as modules for the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_native_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshd_native_script", ROOT / "scripts/native.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_setup() -> ModuleType:
    """setup.py (its ``setup()`` call runs only as ``__main__``), as scripts/native.py
    loads it."""
    setup: ModuleType = load_native_script().load_setup()
    return setup
