"""sidecar/protocol is sans-IO: it never imports trio (nor anything that does I/O)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import sidecar.protocol

PACKAGE = Path(sidecar.protocol.__file__).parent
FORBIDDEN = {"trio", "anyio", "asyncio", "socket", "ssl", "selectors", "h11"}


def test_no_module_imports_trio_or_io() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_the_package_loads_no_trio() -> None:
    code = (
        "import json, sys\n"
        "import sidecar.protocol, sidecar.protocol.http1\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout)
    assert [m for m in modules if m.split(".")[0] in {"trio", "anyio", "h11"}] == []
