"""The sidecar's compiled data path (setup.py, scripts/native.py, docs/native.md)."""

from __future__ import annotations

import importlib
import importlib.machinery
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.native import data_path
from tests.native.support import ROOT, load_native_script, load_setup


def test_the_compiled_modules_are_as_new_as_their_sources() -> None:
    native = load_native_script()
    state, why = native.status(load_setup())
    assert state != "stale", f"{why}: run `make setup` (it runs scripts/native.py build)"


def test_a_checkout_that_can_compile_runs_compiled() -> None:
    why_not = load_setup().why_not_native()
    if why_not is None:
        assert data_path() == "compiled", "the compiled modules are missing: run `make setup`"
    else:
        assert data_path() == "interpreted", why_not


def test_status_follows_the_sources(tmp_path: Path) -> None:
    native, setup = load_native_script(), load_setup()
    for rel in ["setup.py", *setup.NATIVE_MODULES]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    assert native.status(setup, tmp_path)[0] == "absent"

    built = native.built_files(setup, tmp_path)
    assert len(built) == len(setup.NATIVE_MODULES) + 1
    for path in built:
        path.write_bytes(b"")
    assert native.status(setup, tmp_path) == (
        "stale",
        "a compiled source changed since the last build",
    )  # no stamp: not known to match
    stamp = native.stamp_path(tmp_path)
    stamp.parent.mkdir()
    stamp.write_text(native.digest(setup, tmp_path) + "\n")
    assert native.status(setup, tmp_path)[0] == "current"

    source = tmp_path / setup.NATIVE_MODULES[-1]
    source.write_text(source.read_text() + "\n# edited\n")
    assert native.status(setup, tmp_path)[0] == "stale"
    shutil.copyfile(ROOT / setup.NATIVE_MODULES[-1], source)
    assert native.status(setup, tmp_path)[0] == "current"

    built[1].unlink()
    assert native.status(setup, tmp_path) == (
        "stale",
        f"1 of {len(built)} compiled modules missing",
    )
    assert native.clean(setup, tmp_path) == len(built) - 1
    assert native.status(setup, tmp_path)[0] == "absent"
    assert not stamp.exists()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_interpreted_data_path_passes_the_protocol_routing_and_proxy_tests() -> None:
    """What a machine without a C compiler runs: the same sources, not compiled."""
    plugin = ["-p", "tests.support.interpreted", "-p", "no:cacheprovider"]
    suites = ["tests/protocol", "tests/routing", "tests/proxy"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugin, *suites],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=570,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_each_compiled_module_loads_from_its_own_directory() -> None:
    # Found afresh: mypyc derives a compiled module's __file__ (and its spec's origin) from
    # where the shared library is (sidecar/), with one "sidecar/" too many; nothing reads
    # it. A compiled package __init__ would get such a __path__, hence none is compiled.
    for rel in load_setup().NATIVE_MODULES:
        name = rel.removesuffix(".py").replace("/", ".")
        importlib.import_module(name)
        package = sys.modules[name.rpartition(".")[0]]
        assert list(package.__path__) == [str(ROOT / Path(rel).parent)], package.__path__
        spec = importlib.machinery.PathFinder.find_spec(name, package.__path__)
        assert spec is not None
        assert spec.origin is not None
        assert Path(spec.origin).parent == ROOT / Path(rel).parent, rel
        assert Path(spec.origin).name.removeprefix(Path(rel).stem).startswith(".")
