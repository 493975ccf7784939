"""The sidecar's compiled modules in this checkout (setup.py, docs/native.md).

    python scripts/native.py build    # build in place if a compiled source changed
    python scripts/native.py status   # current | stale | absent, and why
    python scripts/native.py clean    # remove them: the sidecar runs interpreted

``build`` is idempotent: a stamp (build/native.stamp) holds a digest of the compiled
sources, setup.py and the Python and mypyc versions, and nothing is rebuilt while it
matches. When the sources changed and the build cannot run (no C compiler), the old
extensions are removed, so a checkout never runs compiled code older than its sources.
``MESHD_NATIVE=0`` removes them too. Run by ``make setup`` (and so by every make target).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def _say(message: str) -> None:
    print(f"native: {message}", flush=True)


def load_setup() -> ModuleType:
    """setup.py as a module (its ``setup()`` call only runs as ``__main__``)."""
    spec = importlib.util.spec_from_file_location("meshd_setup", ROOT / "setup.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mypyc_version() -> str:
    try:
        from mypy.version import __version__  # noqa: PLC0415
    except ImportError:
        return "none"
    return __version__


def digest(setup: ModuleType, root: Path = ROOT) -> str:
    h = hashlib.sha256()
    h.update(f"{sys.version}\n{_mypyc_version()}\n".encode())
    for rel in ["setup.py", *setup.NATIVE_MODULES]:
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()


def stamp_path(root: Path = ROOT) -> Path:
    return root / "build" / "native.stamp"


def built_files(setup: ModuleType, root: Path = ROOT) -> list[Path]:
    """The extension modules a build leaves in the checkout (may not all exist): the
    shared library first, then one per compiled module."""
    shared = root / (setup.GROUP.replace(".", "/") + "__mypyc" + SUFFIX)
    return [shared] + [root / (rel.removesuffix(".py") + SUFFIX) for rel in setup.NATIVE_MODULES]


def status(setup: ModuleType, root: Path = ROOT) -> tuple[str, str]:
    """``current``, ``stale`` (some missing, or older than their sources) or ``absent``,
    and why."""
    files = built_files(setup, root)
    present = [f for f in files if f.exists()]
    if not present:
        return "absent", "no compiled modules: the sidecar runs interpreted"
    if len(present) != len(files):
        return "stale", f"{len(files) - len(present)} of {len(files)} compiled modules missing"
    stamp = stamp_path(root)
    if not stamp.exists() or stamp.read_text().strip() != digest(setup, root):
        return "stale", "a compiled source changed since the last build"
    return "current", f"{len(files) - 1} modules compiled"


def clean(setup: ModuleType, root: Path = ROOT) -> int:
    removed = 0
    for f in built_files(setup, root):
        if f.exists():
            f.unlink()
            removed += 1
    stamp_path(root).unlink(missing_ok=True)
    return removed


def build(setup: ModuleType) -> int:
    if os.environ.get("MESHD_NATIVE", "1") == "0":
        removed = clean(setup)
        _say(f"MESHD_NATIVE=0: the sidecar runs interpreted ({removed} compiled modules removed)")
        return 0
    state, why = status(setup)
    if state == "current":
        _say(f"compiled modules are current ({why})")
        return 0
    why_not = setup.why_not_native()
    if why_not is not None:
        clean(setup)
        _say(f"not built: {why_not}. The sidecar runs interpreted: correct, slower")
        return 0
    _say(f"building {len(setup.NATIVE_MODULES)} modules with mypyc ({why}; about a minute)")
    t0 = time.monotonic()
    log = ROOT / "build" / "native.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        clean(setup)
        tail = log.read_text().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        _say(f"the build failed (full log: {log}); fix it and run 'make setup' again")
        return 1
    stamp_path().write_text(digest(setup) + "\n")
    _say(f"built in {time.monotonic() - t0:.0f} s; the sidecar's data path is compiled")
    return 0


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    setup = load_setup()
    if command == "build":
        return build(setup)
    if command == "clean":
        _say(f"{clean(setup)} compiled modules removed; the sidecar runs interpreted")
        return 0
    if command == "status":
        state, why = status(setup)
        _say(f"{state}: {why}")
        return 0 if state != "stale" else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
