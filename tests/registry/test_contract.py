"""The registry contract (``registry.base.Registry``), run against both backends, under
asyncio and Trio: ``embedded`` on a real sqlite store, and ``consul`` on a real
``consul agent -dev`` (each test registers services of its own names and deregisters them
afterwards, so tests sharing the agent never see each other's instances)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import pytest

from meshd.store.base import Store
from meshd.store.factory import open_store
from registry.base import Registry
from registry.consul import ConsulRegistry
from registry.consul_http import ConsulClient
from registry.embedded import EmbeddedRegistry
from registry.errors import InstanceNotRegistered, InvalidInstance
from registry.model import Instance, RegistryView, sorted_labels
from tests.support.components import ConsulAgent

pytestmark = pytest.mark.anyio

WAIT_S = 10.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Harness:
    registry: Registry
    prefix: str
    """Service names of this test start with it."""

    def instance(self, n: int, service: str = "web", **kw: object) -> Instance:
        fields: dict[str, object] = {
            "id": f"{self.prefix}{service}-{n}.contract",
            "service": f"{self.prefix}{service}",
            "namespace": "contract",
            "address": f"127.0.0.{n + 1}",
            "port": 15006,
            "app_port": 8080,
            "labels": sorted_labels({"version": f"v{n}"}),
        }
        fields.update(kw)
        return Instance(**fields)  # type: ignore[arg-type]

    def key(self, service: str = "web") -> tuple[str, str]:
        return ("contract", f"{self.prefix}{service}")

    async def until(
        self, what: str, predicate: Callable[[RegistryView], bool], within: float = WAIT_S
    ) -> RegistryView:
        """The first view (current or newer) that satisfies ``predicate``."""
        last = self.registry.view()
        with anyio.move_on_after(within):
            async with aclosing(self.registry.watch()) as views:
                async for view in views:
                    last = view
                    if predicate(view):
                        return view
        raise AssertionError(f"no view with {what} within {within:.0f} s; last: {last}")


@pytest.fixture(params=["embedded", pytest.param("consul", marks=pytest.mark.integration)])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncGenerator[Harness, None]:
    prefix = f"c{secrets.token_hex(3)}-"
    if request.param == "embedded":
        store: Store = await open_store(
            "sqlite", data_dir=tmp_path / "data", consul_addr="", consul_token=None
        )
        registry: Registry = EmbeddedRegistry(store, sweep_interval_s=0.1)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(registry.run)
                yield Harness(registry, prefix)
                tg.cancel_scope.cancel()
        finally:
            await store.aclose()
        return
    agent: ConsulAgent = request.getfixturevalue("consul_agent")
    async with ConsulClient(agent.http_addr) as client:
        registry = ConsulRegistry(client, wait_s=10)
        h = Harness(registry, prefix)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(registry.run)
                yield h
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                services = (await client.catalog_services()).value
                for name in services:
                    if name.startswith(prefix):
                        for entry in (await client.health_service(name)).value:
                            await client.agent_service_deregister(entry["Service"]["ID"])


async def test_register_shows_in_watch_and_deregister_removes(harness: Harness) -> None:
    reg = harness.registry
    a, b = harness.instance(1), harness.instance(2)
    assert await reg.register(a, ttl_s=60) == "created"
    assert await reg.register(b, ttl_s=60) == "created"
    view = await harness.until("both", lambda v: len(v.instances(*harness.key())) == 2)
    assert view.instances(*harness.key()) == (a, b), "sorted by id, exactly as registered"
    assert reg.ready
    assert reg.get(a.id) == a
    assert await reg.deregister(a.id)
    view = await harness.until("a gone", lambda v: v.instances(*harness.key()) == (b,))
    assert reg.get(a.id) is None
    assert view.find(a.id) is None
    assert not await reg.deregister(a.id), "deregistering twice: it was not registered"


async def test_health_changes_are_visible_and_recover(harness: Harness) -> None:
    reg = harness.registry
    a = harness.instance(1)
    await reg.register(a, ttl_s=60, output="200 OK")
    await harness.until("a", lambda v: v.find(a.id) == a)
    await reg.report_health(a.id, False, "HTTP GET /health: 503")
    view = await harness.until("a unhealthy", lambda v: v.find(a.id) == replace(a, healthy=False))
    assert view.notes[a.id] == "HTTP GET /health: 503"
    await reg.report_health(a.id, True, "HTTP GET /health: 200")
    view = await harness.until("a healthy", lambda v: v.find(a.id) == a)
    await harness.until("its output", lambda v: v.notes.get(a.id) == "HTTP GET /health: 200")
    # Registering an unhealthy description is a health change too.
    await reg.register(replace(a, healthy=False), ttl_s=60)
    await harness.until("a unhealthy again", lambda v: v.find(a.id) == replace(a, healthy=False))


async def test_report_health_of_an_unknown_instance(harness: Harness) -> None:
    with pytest.raises(InstanceNotRegistered) as caught:
        await harness.registry.report_health(f"{harness.prefix}ghost-1.contract", True)
    assert "register it again" in str(caught.value)


async def test_missed_heartbeats_take_it_out_of_the_endpoints(harness: Harness) -> None:
    """No heartbeat within the TTL: the embedded registry drops the instance, Consul marks
    its TTL check critical. Either way no peer routes to it; a heartbeat brings it back."""
    reg = harness.registry
    a, b = harness.instance(1), harness.instance(2)
    await reg.register(a, ttl_s=1)
    await reg.register(b, ttl_s=60)
    await harness.until("both", lambda v: len(v.instances(*harness.key())) == 2)
    view = await harness.until(
        "a out of the endpoints",
        lambda v: [i.id for i in v.instances(*harness.key()) if i.healthy] == [b.id],
        within=8,
    )
    if reg.backend == "embedded":
        assert view.find(a.id) is None
    else:
        assert view.find(a.id) == replace(a, healthy=False)
    await reg.register(a, ttl_s=60)
    await harness.until("a back", lambda v: v.find(a.id) == a)


async def test_labels_round_trip_exactly(harness: Harness) -> None:
    labels = {
        "version": "v2",
        "zone": "eu-west-1a",
        "app.kubernetes.io/name": "reviews",
        "under_score": "x",
        "Mixed-Case": "Value With Spaces",
        "empty": "",
        "unicode-é": "ü",
    }
    a = harness.instance(1, labels=sorted_labels(labels), service_account="reviews-sa")
    await harness.registry.register(a, ttl_s=60)
    view = await harness.until("a", lambda v: v.find(a.id) is not None)
    got = view.find(a.id)
    assert got == a
    assert got is not None
    assert got.label_map() == labels


async def test_each_protocol_and_unmeshed_round_trip(harness: Harness) -> None:
    insts = [
        harness.instance(1, service="grpc", protocol="grpc", app_port=9090),
        harness.instance(2, service="db", protocol="tcp", meshed=False, port=5432, app_port=5432),
    ]
    for inst in insts:
        await harness.registry.register(inst, ttl_s=60)
    for inst in insts:
        await harness.until(inst.id, lambda v, i=inst: v.find(i.id) == i)  # type: ignore[misc]


async def test_heartbeat_changes_nothing_and_views_share_unchanged_services(
    harness: Harness,
) -> None:
    reg = harness.registry
    a, b = harness.instance(1), harness.instance(1, service="api")
    await reg.register(a, ttl_s=60)
    await reg.register(b, ttl_s=60)
    before = await harness.until("both services", lambda v: v.find(a.id) == a and v.find(b.id) == b)
    assert await reg.register(a, ttl_s=60) == "refreshed"
    assert reg.view().services.get(harness.key()) is before.services[harness.key()]
    # A change to one service leaves the other's tuple (and its objects) as they were.
    await reg.report_health(a.id, False)
    after = await harness.until("a unhealthy", lambda v: v.find(a.id) == replace(a, healthy=False))
    assert after.services[harness.key("api")] is before.services[harness.key("api")]
    for key, insts in after.services.items():
        assert list(insts) == sorted(insts, key=lambda i: i.id), key
        assert all((i.namespace, i.service) == key for i in insts)


async def test_a_ttl_out_of_range_is_refused(harness: Harness) -> None:
    with pytest.raises(InvalidInstance) as caught:
        await harness.registry.register(harness.instance(1), ttl_s=0.1)
    assert caught.value.field == "ttlSeconds"
