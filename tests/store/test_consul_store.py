"""What only the Consul store does: its KV layout, its errors when Consul is away, and a
watch that outlives a Consul restart."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest

from meshd.errors import BadRequest, StoreUnavailable
from meshd.store.consul import ConsulStore
from meshd.store.factory import open_store
from registry.consul_http import ConsulClient
from tests.store.helpers import vs_body, vs_key, watching
from tests.support.components import ConsulAgent, start_consul_agent
from tests.support.processes import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(consul_agent: ConsulAgent) -> AsyncGenerator[ConsulClient, None]:
    async with ConsulClient(consul_agent.http_addr) as c:
        yield c


@pytest.mark.integration
async def test_kv_layout(client: ConsulClient, consul_prefix: str) -> None:
    store = ConsulStore(client, consul_prefix)
    await store.put(vs_key(), vs_body(weight=90), actor="alice")
    await store.put(vs_key(), vs_body(weight=80), actor="bob")
    await store.record_put("tokens", "abc", {"role": "admin"})
    keys = await client.kv_keys(consul_prefix)
    assert keys == [
        f"{consul_prefix}history/VirtualService/default/reviews/0000000001",
        f"{consul_prefix}history/VirtualService/default/reviews/0000000002",
        f"{consul_prefix}records/tokens/abc",
        f"{consul_prefix}resources/VirtualService/default/reviews",
    ]
    pair = await client.kv_get(f"{consul_prefix}resources/VirtualService/default/reviews")
    assert pair is not None
    assert pair.value is not None
    stored = json.loads(pair.value)
    assert stored.keys() == {"revision", "body", "updated_at", "updated_by"}
    assert (stored["revision"], stored["updated_by"]) == (2, "bob")
    assert stored["body"] == vs_body(weight=80)


@pytest.mark.integration
async def test_unreadable_entries_are_skipped_with_a_warning(
    client: ConsulClient, consul_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ConsulStore(client, consul_prefix)
    await store.put(vs_key(), vs_body(), actor="a")
    await client.kv_put(f"{consul_prefix}resources/VirtualService/default/junk", b"not json")
    with caplog.at_level(logging.WARNING, logger="meshd.store.consul"):
        assert [r.key for r in await store.list()] == [vs_key()]
        async with watching(store) as states:
            with anyio.fail_after(10):
                state = await anext(states)
    assert set(state.resources) == {vs_key()}
    assert "ignoring unreadable entry" in caplog.text
    with pytest.raises(StoreUnavailable, match="is not a meshd resource"):
        await store.get(vs_key("junk"))


@pytest.mark.integration
async def test_a_value_over_consuls_limit_is_a_bad_request(
    client: ConsulClient, consul_prefix: str
) -> None:
    store = ConsulStore(client, consul_prefix)
    huge = vs_body()
    huge["metadata"]["annotations"] = {"blob": "x" * 600_000}
    with pytest.raises(BadRequest, match="too large for Consul KV"):
        await store.put(vs_key(), huge, actor="a")
    assert await store.get(vs_key()) is None


async def test_unreachable_consul_is_store_unavailable(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable) as info:
        await open_store("consul", data_dir=tmp_path, consul_addr=addr, consul_token=None)
    message = str(info.value)
    assert f"Consul at http://{addr} is unreachable" in message
    assert "check that Consul is running" in message
    assert info.value.context["address"] == f"http://{addr}"

    store = ConsulStore(ConsulClient(addr), owns_client=True)
    try:
        with pytest.raises(StoreUnavailable, match=r"cannot read VirtualService default/reviews"):
            await store.get(vs_key())
        with pytest.raises(StoreUnavailable, match=r"cannot list resources"):
            await store.list()
    finally:
        await store.aclose()


async def test_acl_refusal_names_the_prefix() -> None:
    def deny(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, content=b"Permission denied")

    client = ConsulClient(token="t", transport=httpx.MockTransport(deny))
    store = ConsulStore(client, "mesh/", owns_client=True)
    try:
        with pytest.raises(
            StoreUnavailable, match="the token needs key:write on the prefix 'mesh/'"
        ):
            await store.record_put("tokens", "x", {})
    finally:
        await store.aclose()


class SignalsBlockingQueries(httpx.AsyncHTTPTransport):
    """Sets ``sent`` when a blocking query goes out, so a test knows a watch is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "index" in request.url.params:
            self.sent.set()
        return await super().handle_async_request(request)


@pytest.mark.integration
@pytest.mark.slow
async def test_watch_survives_a_consul_restart(caplog: pytest.LogCaptureFixture) -> None:
    agent = await anyio.to_thread.run_sync(start_consul_agent)
    port = int(agent.http_addr.rsplit(":", 1)[1])
    transport = SignalsBlockingQueries()
    writer = ConsulStore(ConsulClient(agent.http_addr), owns_client=True)
    watcher = ConsulStore(ConsulClient(agent.http_addr, transport=transport), owns_client=True)
    try:
        with caplog.at_level(logging.INFO, logger="meshd.store.consul"):
            async with watching(watcher) as states:
                with anyio.fail_after(45):
                    await writer.put(vs_key("before"), vs_body("before"), actor="a")
                    state = await anext(states)
                    assert vs_key("before") in state.resources
                    async with anyio.create_task_group() as tg:

                        async def consume() -> None:
                            nonlocal state
                            while vs_key("after") not in state.resources:
                                state = await anext(states)

                        tg.start_soon(consume)
                        await transport.sent.wait()
                        # Consul goes away while the watch waits on it, and comes back
                        # empty (a dev agent keeps nothing) with a lower index.
                        await anyio.to_thread.run_sync(agent.process.stop)
                        agent = await anyio.to_thread.run_sync(start_consul_agent, port)
                        await writer.put(vs_key("after"), vs_body("after"), actor="a")
        assert set(state.resources) == {vs_key("after")}
        messages = [r.getMessage() for r in caplog.records if r.name == "meshd.store.consul"]
        failed = [m for m in messages if "failed" in m]
        recovered = [m for m in messages if "recovered" in m]
        assert len(failed) == 1, messages
        assert "retrying with backoff" in failed[0]
        assert len(recovered) == 1, messages
    finally:
        await writer.aclose()
        await watcher.aclose()
        await anyio.to_thread.run_sync(agent.process.stop)


@pytest.mark.integration
async def test_closing_ends_watches(consul_agent: ConsulAgent, consul_prefix: str) -> None:
    transport = SignalsBlockingQueries()
    store = ConsulStore(
        ConsulClient(consul_agent.http_addr, transport=transport), consul_prefix, owns_client=True
    )
    seen = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                async for state in store.watch():
                    seen.append(state)

            tg.start_soon(follow)
            await transport.sent.wait()  # the watch now waits on Consul
            await store.aclose()
    assert len(seen) == 1
