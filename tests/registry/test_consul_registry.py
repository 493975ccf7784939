"""The Consul registry against a real ``consul agent -dev``: what a Consul user registers
by hand, services beyond the connection budget, an agent that restarts empty (its index
starts over), and Consul being unreachable."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing, asynccontextmanager

import anyio
import httpx
import pytest

from registry.consul import ConsulRegistry
from registry.consul_http import ConsulClient
from registry.errors import ConsulUnavailable, InvalidInstance
from registry.model import Instance, RegistryView, sorted_labels
from tests.support.components import ConsulAgent, start_consul_agent

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(3)}-"


@asynccontextmanager
async def running(registry: ConsulRegistry) -> AsyncGenerator[ConsulRegistry, None]:
    async with anyio.create_task_group() as tg:
        await tg.start(registry.run)
        yield registry
        tg.cancel_scope.cancel()


async def until(
    registry: ConsulRegistry,
    what: str,
    predicate: Callable[[RegistryView], bool],
    within: float = 10,
) -> RegistryView:
    last = registry.view()
    with anyio.move_on_after(within):
        async with aclosing(registry.watch()) as views:
            async for view in views:
                last = view
                if predicate(view):
                    return view
    raise AssertionError(f"no view with {what} within {within:.0f} s; last: {last}")


async def cleanup(client: ConsulClient, prefix: str) -> None:
    with anyio.CancelScope(shield=True):
        for name in (await client.catalog_services()).value:
            if name.startswith(prefix):
                for entry in (await client.health_service(name)).value:
                    await client.agent_service_deregister(entry["Service"]["ID"])


def put(agent: ConsulAgent, path: str, body: object = None) -> None:
    reply = httpx.put(f"{agent.url}{path}", json=body, timeout=10, trust_env=False)
    assert reply.status_code == 200, reply.text


async def test_what_a_consul_user_registers_by_hand(
    consul_agent: ConsulAgent, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "registry.consul")
    web = f"{prefix}web"
    async with ConsulClient(consul_agent.http_addr) as client:
        try:
            async with running(ConsulRegistry(client, wait_s=10)) as reg:
                await until(reg, "the catalog read", lambda _view: reg.ready)
                # Our Meta format, written with Consul's own API and a script check of
                # its own (TTL here), as a Consul user would.
                put(
                    consul_agent,
                    "/v1/agent/service/register",
                    {
                        "ID": f"{web}-1",
                        "Name": web,
                        "Address": "127.0.0.1",
                        "Port": 21001,
                        "Meta": {
                            "mesh-namespace": "shop",
                            "mesh-app-port": "8080",
                            "mesh-label-version": "v1",
                            "mesh-label-app_2Ekubernetes_2Eio_2Fname": "web",
                        },
                        "Check": {"CheckID": f"{web}-1-ttl", "TTL": "30s", "Status": "passing"},
                    },
                )
                # Not the mesh's: no mesh-namespace.
                put(
                    consul_agent,
                    "/v1/agent/service/register",
                    {"ID": f"{prefix}db", "Name": f"{prefix}db", "Port": 5432},
                )
                # The mesh's, but its Meta cannot be read.
                put(
                    consul_agent,
                    "/v1/agent/service/register",
                    {
                        "ID": f"{web}-bad",
                        "Name": web,
                        "Port": 21002,
                        "Meta": {"mesh-namespace": "shop", "mesh-app-port": "http"},
                    },
                )
                view = await until(reg, "web-1", lambda v: v.find(f"{web}-1") is not None)
                assert view.instances("shop", web) == (
                    Instance(
                        id=f"{web}-1",
                        service=web,
                        namespace="shop",
                        address="127.0.0.1",
                        port=21001,
                        app_port=8080,
                        labels=sorted_labels({"version": "v1", "app.kubernetes.io/name": "web"}),
                    ),
                )
                assert not [k for k in view.services if k[1] == f"{prefix}db"]
                assert any(
                    f"{web}-bad" in r.message and "port" in r.message for r in caplog.records
                )
                # Their own check failing takes it out.
                put(consul_agent, f"/v1/agent/check/fail/{web}-1-ttl?note=down")
                view = await until(
                    reg, "web-1 unhealthy", lambda v: not v.instances("shop", web)[0].healthy
                )
                assert view.notes[f"{web}-1"] == "down"
                # One log line per lifecycle event seen in Consul.
                events = [r.message for r in caplog.records if f"{web}-1 " in r.message]
                appeared = "appeared in Consul at 127.0.0.1:21001, healthy"
                assert events == [
                    f"instance {web}-1 of {web}.shop {appeared}",
                    f"instance {web}-1 is unhealthy in Consul: down",
                ]
        finally:
            await cleanup(client, prefix)


async def test_meta_that_does_not_fit_is_refused_before_sending(consul_agent: ConsulAgent) -> None:
    async with ConsulClient(consul_agent.http_addr) as client:
        reg = ConsulRegistry(client)
        inst = Instance(
            "x-1.default", "x", "default", "127.0.0.1", 15006, 8080, labels=(("k" * 200, "v"),)
        )
        with pytest.raises(InvalidInstance, match="too long"):
            await reg.register(inst)


async def test_services_beyond_the_watch_budget_are_still_followed(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One blocking query per service for 1 service only: the others go through
    /v1/health/state/any and re-reads on registration changes. On an agent of its own:
    the session's agent holds other tests' services (and their expiring TTL checks),
    which the overflow watch would re-read with these, at a pace set by those tests."""
    caplog.set_level(logging.WARNING, "registry.consul")
    consul_agent = await anyio.to_thread.run_sync(start_consul_agent)
    try:
        await _follow_beyond_the_budget(consul_agent, prefix, caplog)
    finally:
        consul_agent.process.stop(timeout=10)


async def _follow_beyond_the_budget(
    consul_agent: ConsulAgent, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:

    def inst(name: str, n: int) -> Instance:
        return Instance(
            f"{prefix}{name}-{n}.ov", f"{prefix}{name}", "ov", "127.0.0.1", 20000 + n, 80
        )

    async with ConsulClient(consul_agent.http_addr) as client:
        try:
            writer = ConsulRegistry(client)
            for name in ("a", "b", "c"):
                await writer.register(inst(name, 1), ttl_s=60)
            reg = ConsulRegistry(client, max_watches=1, wait_s=10, overflow_refresh_s=60)
            async with running(reg):
                await until(reg, "all three", lambda v: all(v.find(inst(n, 1).id) for n in "abc"))
                assert reg.ready
                watched, together = reg.watched
                assert watched == 1
                assert together >= 2
                assert any("--consul-max-watches" in r.message for r in caplog.records)
                # Health changes of services watched together: through the check watch.
                for name in "abc":
                    await writer.report_health(inst(name, 1).id, False, "boom")
                await until(
                    reg,
                    "all unhealthy",
                    lambda v: all(not v.find(inst(n, 1).id).healthy for n in "abc"),  # type: ignore[union-attr]
                    within=15,
                )
                # New instances and new services: through the catalog's index.
                await writer.register(inst("c", 2), ttl_s=60)
                await writer.register(inst("d", 1), ttl_s=60)
                await until(
                    reg,
                    "c-2 and d-1",
                    lambda v: bool(v.find(inst("c", 2).id) and v.find(inst("d", 1).id)),
                    within=15,
                )
                await writer.deregister(inst("b", 1).id)
                await until(reg, "b gone", lambda v: v.find(inst("b", 1).id) is None, within=15)
        finally:
            await cleanup(client, prefix)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_an_agent_that_restarts_empty_is_followed() -> None:
    """Consul comes back as a new cluster (its index starts over): the watch notices the
    index going backwards and shows the new catalog; while it is down, the last view
    stays and writes fail with ConsulUnavailable."""
    agent = start_consul_agent()
    port = int(agent.http_addr.rsplit(":", 1)[1])
    try:
        async with ConsulClient(agent.http_addr, timeout=3) as client:
            reg = ConsulRegistry(client, wait_s=30)
            old = Instance("old-1.r", "old", "r", "127.0.0.1", 20001, 80)
            async with running(reg):
                # Push the index well above what a fresh agent starts from.
                for n in range(30):
                    await reg.register(old, ttl_s=60 + n)
                await until(reg, "old", lambda v: v.find(old.id) == old)
                agent.process.stop(timeout=10)
                with pytest.raises(ConsulUnavailable):
                    await reg.register(Instance("x-1.r", "x", "r", "127.0.0.1", 1, 1))
                await anyio.sleep(1)
                assert reg.view().find(old.id) == old, "an outage does not drop endpoints"
                agent = await anyio.to_thread.run_sync(lambda: start_consul_agent(http_port=port))
                new = Instance("new-1.r", "new", "r", "127.0.0.1", 20002, 80)
                await reg.register(new, ttl_s=60)
                await until(
                    reg,
                    "the new agent's catalog",
                    lambda v: v.find(new.id) == new and v.find(old.id) is None,
                    within=40,
                )
    finally:
        agent.process.stop(timeout=10)
