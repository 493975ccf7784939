"""The sidecar's compiled data path: its pure, hot modules (the HTTP/1.1 layer, routing,
header forwarding) are also built as C extensions with mypyc, from the same typed
sources. The metadata lives in pyproject.toml; this file only adds the extensions.

Compiled or not, the code is the same: an extension module is imported in place of its
``.py`` when one was built, and the sources run as they are otherwise. The build is
skipped, with a warning, when there is no C compiler, when ``MESHD_NATIVE=0``, or when
mypyc is not installed (docs/native.md).

- wheels (``pip wheel .``, scripts/images.sh): mypyc comes from ``build-system.requires``;
- a checkout: scripts/build-native.sh builds the extensions in place, and again
  whenever a compiled source changes (``make setup`` runs it).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup

NATIVE_MODULES = [
    "sidecar/protocol/errors.py",
    "sidecar/protocol/events.py",
    "sidecar/protocol/framing.py",
    "sidecar/protocol/headers.py",
    "sidecar/protocol/heads.py",
    "sidecar/protocol/http1.py",
    "sidecar/protocol/limits.py",
    "sidecar/protocol/states.py",
    "sidecar/routing/request.py",
    "sidecar/routing/retry.py",
    "sidecar/routing/route.py",
    "sidecar/routing/table.py",
    "sidecar/proxy/forwarding.py",
]
"""Compiled together (one shared library, ``sidecar/_native__mypyc*.so``): calls between
them are C calls. Only modules without async code and without monkeypatching in tests;
never a package's ``__init__`` (mypyc would give the package a wrong ``__path__``)."""

GROUP = "sidecar._native"


def _warn(message: str) -> None:
    print(f"meshd native build: {message}; the sidecar runs interpreted", file=sys.stderr)


def why_not_native() -> str | None:
    """Why the extensions cannot be built here, or None when they can."""
    if os.environ.get("MESHD_NATIVE", "1") == "0":
        return "MESHD_NATIVE=0"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}); install gcc to build it"
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        return f"no Python headers in {include}; install python3-dev to build it"
    try:
        import mypyc.build  # noqa: F401, PLC0415
    except ImportError:
        return "mypyc is not installed (pip install mypy)"
    return None


# mypyc reads a mypy config: not pyproject.toml's, which loads the pydantic plugin and
# expects every dependency installed. A wheel's isolated build environment has only
# setuptools and mypy; modules it cannot find are typed Any (calls into them stay
# Python calls), and errors outside the compiled modules are not ours to fix here.
MYPYC_CONFIG = """\
[mypy]
python_version = 3.11
ignore_missing_imports = True
follow_imports = silent
"""


def native_extensions() -> list[Extension]:
    why = why_not_native()
    if why is not None:
        _warn(why)
        return []
    from mypyc.build import mypycify  # noqa: PLC0415

    config = Path("build") / "mypyc.ini"
    config.parent.mkdir(exist_ok=True)
    config.write_text(MYPYC_CONFIG)
    return mypycify(
        ["--config-file", str(config), *NATIVE_MODULES], opt_level="3", group_name=GROUP
    )


if __name__ == "__main__":
    setup(ext_modules=native_extensions())
