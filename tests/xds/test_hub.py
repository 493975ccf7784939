"""The long-poll protocol of the xDS hub, driven directly (no sockets)."""

from __future__ import annotations

import anyio
import pytest

from meshd.compile import snapshot as s
from meshd.errors import NotFound
from meshd.xds.hub import XdsHub

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def snap(version: str, proxy: str = "p.default") -> s.ProxySnapshot:
    return s.ProxySnapshot(
        proxy_id=proxy,
        version=version,
        service="p.default.svc.cluster.local",
        namespace="default",
        identity="spiffe://cluster.local/ns/default/sa/p",
        inbound=s.InboundConfig(port=15006, app_port=8080, protocol="http"),
        outbound=s.OutboundConfig((), (), (), digest=f"out-{version}"),
    )


async def test_poll_answers_new_versions_and_waits_on_the_current_one() -> None:
    hub = XdsHub()
    hub.publish({"p.default": snap("v1")}, {}, ["p.default"])
    got = await hub.poll("p.default", "", 1)
    assert got is not None
    assert got.version == "v1"
    assert await hub.poll("p.default", "v1", 0.05) is None
    assert hub.get("p.default").sync_state() == "SYNCED"


async def test_a_waiting_poll_gets_the_push() -> None:
    hub = XdsHub()
    hub.publish({"p.default": snap("v1")}, {}, ["p.default"])
    results: list[str] = []

    async def waiter() -> None:
        got = await hub.poll("p.default", "v1", 5)
        assert got is not None
        results.append(got.version)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        hub.publish({"p.default": snap("v2")}, {}, ["p.default"])
    assert results == ["v2"]
    assert hub.get("p.default").sync_state() == "STALE"  # sent, not yet ACKed


async def test_nacked_version_is_not_resent_until_a_new_one() -> None:
    hub = XdsHub()
    hub.publish({"p.default": snap("v1")}, {}, ["p.default"])
    await hub.poll("p.default", "", 1)
    hub.publish({"p.default": snap("v2")}, {}, ["p.default"])
    hub.ack("p.default", "v2", "cannot apply")
    assert hub.get("p.default").sync_state() == "NACKED"
    assert await hub.poll("p.default", "v1", 0.05) is None
    hub.publish({"p.default": snap("v3")}, {}, ["p.default"])
    got = await hub.poll("p.default", "v1", 1)
    assert got is not None
    assert got.version == "v3"


async def test_restart_poll_with_the_version_it_runs_is_an_ack_once_published() -> None:
    acks: list[str] = []
    hub = XdsHub(on_ack=lambda state, _latency: acks.append(state.acked_version))

    async with anyio.create_task_group() as tg:
        # A fresh meshd: the proxy is registered but nothing is compiled yet.
        tg.start_soon(lambda: hub.poll("p.default", "v1", 0.5, registered=True))
        await anyio.wait_all_tasks_blocked()
        hub.publish({"p.default": snap("v1")}, {}, ["p.default"])
        await anyio.wait_all_tasks_blocked()
        assert hub.get("p.default").sync_state() == "SYNCED"
        tg.cancel_scope.cancel()
    assert acks == ["v1"]


async def test_errors_keep_the_last_good_snapshot_and_gone_proxies_get_404() -> None:
    hub = XdsHub()
    hub.publish({"p.default": snap("v1")}, {}, ["p.default"])
    hub.publish({}, {"p.default": ("route r: no cluster",)}, ["p.default"])
    state = hub.get("p.default")
    assert state.version == "v1"
    assert hub.status(state)["errors"] == ["route r: no cluster"]
    with pytest.raises(NotFound):
        await hub.poll("ghost.default", "", 0)
    hub.publish({}, {}, [])
    with pytest.raises(NotFound):
        await hub.poll("p.default", "v1", 0)
