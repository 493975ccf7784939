"""A quick scale smoke test (not timed: see measure_compile for numbers)."""

from __future__ import annotations

from meshd.compile.check import check_snapshot
from meshd.compile.compiler import CompileSettings, compile_mesh
from tests.compile.support import generated_mesh


def test_200_services_x_3_instances_compile_coherently() -> None:
    resources, registry = generated_mesh(200, namespaces=4)
    result = compile_mesh(resources, registry, CompileSettings())
    assert result.errors == {}
    assert len(result.snapshots) == 600
    for snap in result.snapshots.values():
        assert check_snapshot(snap) == []
        assert len(snap.outbound.virtual_hosts) == 200
        assert len(snap.outbound.clusters) == 200 * 4
