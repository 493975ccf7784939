"""Golden tests: each scenario in ``tests/golden/<name>/`` compiles to exactly
``tests/golden/<name>.json``. Run ``pytest --update-goldens`` to rewrite them after an
intended change, and review the diff: the golden files are the spec."""

from __future__ import annotations

import pytest

from meshd.compile import codec
from meshd.compile import snapshot as s
from meshd.compile.check import check_snapshot
from meshd.compile.compiler import Compiler, compile_mesh
from tests.compile.support import GOLDEN, golden_text, load_scenario, scenarios


@pytest.mark.parametrize("name", scenarios())
def test_golden(name: str, update_goldens: bool) -> None:
    resources, registry, settings = load_scenario(name)
    result = compile_mesh(resources, registry, settings)
    text = golden_text(result)
    path = GOLDEN / f"{name}.json"
    if update_goldens:
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run pytest --update-goldens and review it"
    assert text == path.read_text(), f"{name}: output differs from {path.name} (see the diff)"


@pytest.mark.parametrize("name", scenarios())
def test_golden_snapshots_are_coherent_and_round_trip(name: str) -> None:
    resources, registry, settings = load_scenario(name)
    result = compile_mesh(resources, registry, settings)
    for snap in result.snapshots.values():
        assert check_snapshot(snap) == []
        assert codec.loads(s.ProxySnapshot, codec.dumps(snap)) == snap


@pytest.mark.parametrize("name", scenarios())
def test_golden_is_independent_of_resource_order(name: str) -> None:
    resources, registry, settings = load_scenario(name)
    forward = compile_mesh(resources, registry, settings)
    backward = Compiler().compile(list(reversed(resources)), registry, settings)
    assert forward.snapshots == backward.snapshots
    assert forward.errors == backward.errors
