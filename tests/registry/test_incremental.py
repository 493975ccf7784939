"""Endpoint churn is incremental: the views both registries publish after a one-instance
change let the compiler rebuild that one service's piece and reuse every other."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from meshd.compile.compiler import Compiler, CompileSettings
from registry.consul import ConsulRegistry
from registry.consul_http import ConsulClient
from registry.consul_meta import check_id, service_definition
from registry.embedded import EmbeddedRegistry
from registry.model import Instance, RegistryView, sorted_labels

pytestmark = pytest.mark.anyio

SERVICES = 1000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def instances() -> list[Instance]:
    return [
        Instance(
            id=f"svc{n}-{v}.default",
            service=f"svc{n}",
            namespace="default",
            address=f"198.18.{n // 250}.{n % 250 + 1}",
            port=15006 + i,
            app_port=8080,
            labels=sorted_labels({"version": v}),
        )
        for n in range(SERVICES)
        for i, v in enumerate(("v1", "v2", "v3"))
    ]


def entries(insts: list[Instance]) -> list[dict[str, Any]]:
    out = []
    for inst in insts:
        d = service_definition(inst, ttl_s=20, deregister_after_s=300)
        out.append(
            {
                "Node": {"Node": "vm", "Address": "198.18.255.1"},
                "Service": {
                    "ID": d["ID"],
                    "Service": d["Name"],
                    "Address": d["Address"],
                    "Port": d["Port"],
                    "Meta": d["Meta"],
                },
                "Checks": [
                    {
                        "CheckID": check_id(inst.id),
                        "ServiceID": inst.id,
                        "Status": "passing" if inst.healthy else "critical",
                    }
                ],
            }
        )
    return out


def rebuilt_after(before: RegistryView, after: RegistryView) -> tuple[int, int, int]:
    compiler = Compiler()
    settings = CompileSettings()
    compiler.compile([], before, settings)
    stats = compiler.compile([], after, settings).stats
    return stats.pieces_built, stats.pieces_reused, stats.versions_changed


async def test_embedded_one_instance_change_rebuilds_one_piece() -> None:
    reg = EmbeddedRegistry()
    for inst in instances():
        await reg.register(inst)
    before = reg.view()
    target = instances()[7]
    await reg.report_health(target.id, False, "503")
    after = reg.view()
    changed = [k for k in after.services if after.services[k] is not before.services[k]]
    assert changed == [("default", target.service)]
    built, reused, _ = rebuilt_after(before, after)
    assert (built, reused) == (1, SERVICES - 1)


async def test_consul_one_instance_change_rebuilds_one_piece() -> None:
    async with ConsulClient("127.0.0.1:1") as unused:  # the view is driven by hand
        reg = ConsulRegistry(unused)
        insts = instances()
        by_service: dict[str, list[Instance]] = {}
        for inst in insts:
            by_service.setdefault(inst.service, []).append(inst)
        for name, members in by_service.items():
            reg.apply_service(name, entries(members))
        before = reg.view()
        # Every answer for a service is parsed afresh: equal instances must still come
        # out as the very same objects, in the very same tuple.
        reg.apply_service("svc3", entries(by_service["svc3"]))
        assert reg.view().services is before.services
        target = by_service["svc5"][1]
        changed = [
            replace(i, healthy=False) if i.id == target.id else i for i in by_service["svc5"]
        ]
        reg.apply_service("svc5", entries(changed))
        after = reg.view()
        assert after.services[("default", "svc4")] is before.services[("default", "svc4")]
        assert after.find(target.id) == replace(target, healthy=False)
        built, reused, _ = rebuilt_after(before, after)
        assert (built, reused) == (1, SERVICES - 1)
