"""Versions are content hashes: equal inputs give equal versions in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from meshd.compile.compiler import compile_mesh
from tests.compile.support import load_scenario

ROOT = Path(__file__).resolve().parents[2]
_VERSIONS = (
    "import json; from meshd.compile.compiler import compile_mesh; "
    "from tests.compile.support import load_scenario; "
    "r = compile_mesh(*load_scenario('{name}')); "
    "print(json.dumps({{p: s.version for p, s in r.snapshots.items()}}))"
)


def _versions_in_a_process(name: str, hash_seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _VERSIONS.format(name=name)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    versions: dict[str, str] = json.loads(out.stdout)
    return versions


def test_versions_do_not_depend_on_the_process() -> None:
    here = {
        p: s.version for p, s in compile_mesh(*load_scenario("authorization")).snapshots.items()
    }
    assert _versions_in_a_process("authorization", "1") == here
    assert _versions_in_a_process("authorization", "4242") == here


def test_versions_differ_when_content_differs() -> None:
    result = compile_mesh(*load_scenario("bookinfo"))
    versions = [s.version for s in result.snapshots.values()]
    assert len(set(versions)) == len(versions)
    assert all(len(v) == 16 and int(v, 16) >= 0 for v in versions)
