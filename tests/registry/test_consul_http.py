"""The Consul HTTP client against a real ``consul agent -dev`` (and, for the retry and
index rules of blocking queries, against scripted answers), under asyncio and Trio."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
import httpx
import pytest

from registry.consul_http import (
    MAX_TXN_OPS,
    Backoff,
    ConsulClient,
    KVOp,
    KVPair,
    QueryResult,
    base_url,
)
from registry.errors import (
    ConsulClientClosed,
    ConsulError,
    ConsulPermissionDenied,
    ConsulUnavailable,
    TxnAborted,
    TxnTooLarge,
)
from tests.support.components import ConsulAgent
from tests.support.processes import free_port


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(consul_agent: ConsulAgent) -> AsyncGenerator[ConsulClient, None]:
    async with ConsulClient(consul_agent.http_addr) as c:
        yield c


pytestmark = pytest.mark.anyio


# --- against a real agent ----------------------------------------------------------------


@pytest.mark.integration
async def test_kv_roundtrip_and_cas(client: ConsulClient, consul_prefix: str) -> None:
    key = consul_prefix + "a/b"
    assert await client.kv_get(key) is None
    assert await client.kv_put(key, b"one", cas=0)
    assert not await client.kv_put(key, b"two", cas=0), "cas=0 must refuse an existing key"
    pair = await client.kv_get(key)
    assert pair is not None
    assert pair.value == b"one"
    assert not await client.kv_put(key, b"two", cas=pair.modify_index + 1000)
    assert await client.kv_put(key, b"two", cas=pair.modify_index)
    await client.kv_put(consul_prefix + "a/c", b"")
    listed = await client.kv_list(consul_prefix)
    assert [p.key for p in listed.value] == [key, consul_prefix + "a/c"]
    assert listed.value[0].value == b"two"
    assert listed.value[1].value is None
    assert listed.index >= listed.value[0].modify_index
    assert await client.kv_keys(consul_prefix) == [key, consul_prefix + "a/c"]
    assert await client.kv_keys(consul_prefix, separator="/") == [consul_prefix + "a/"]
    current = await client.kv_get(key)
    assert current is not None
    assert not await client.kv_delete(key, cas=current.modify_index - 1)
    assert await client.kv_delete(key, cas=current.modify_index)
    assert await client.kv_get(key) is None
    assert (await client.kv_list(consul_prefix + "missing/")).value == ()


@pytest.mark.integration
async def test_blocking_query_returns_on_change(client: ConsulClient, consul_prefix: str) -> None:
    await client.kv_put(consul_prefix + "k", b"v1")
    first = await client.kv_list(consul_prefix)
    seen: list[QueryResult[tuple[KVPair, ...]]] = []

    async def block() -> None:
        seen.append(await client.kv_list(consul_prefix, index=first.index, wait=30))

    started = time.monotonic()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(block)
            # Whether the write lands before or after the query starts blocking, the query
            # must answer with it: its index is newer than the one we asked to wait past.
            await client.kv_put(consul_prefix + "k", b"v2")
    assert time.monotonic() - started < 5, "the blocking query waited for its timeout"
    (result,) = seen
    assert result.index > first.index
    assert result.value[0].value == b"v2"


@pytest.mark.integration
async def test_blocking_query_returns_after_wait(client: ConsulClient, consul_prefix: str) -> None:
    await client.kv_put(consul_prefix + "k", b"v1")
    first = await client.kv_list(consul_prefix)
    started = time.monotonic()
    with anyio.fail_after(10):
        again = await client.kv_list(consul_prefix, index=first.index, wait=0.5)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 5
    assert again.index == first.index
    assert again.value == first.value


@pytest.mark.integration
async def test_watch_yields_current_then_changes(client: ConsulClient, consul_prefix: str) -> None:
    await client.kv_put(consul_prefix + "k", b"v1")
    watch = client.kv_watch(consul_prefix, wait=30)
    try:
        with anyio.fail_after(10):
            initial = await anext(watch)
            assert [p.value for p in initial.value] == [b"v1"]
            await client.kv_put(consul_prefix + "k", b"v2")
            changed = await anext(watch)
        assert changed.index > initial.index
        assert [p.value for p in changed.value] == [b"v2"]
    finally:
        await watch.aclose()


@pytest.mark.integration
async def test_txn_applies_all_or_nothing(client: ConsulClient, consul_prefix: str) -> None:
    a, b = consul_prefix + "a", consul_prefix + "b"
    result = await client.txn([KVOp.cas(a, b"1", index=0), KVOp.set(b, b"1")])
    created = result.entry(a)
    assert created is not None
    assert created.modify_index > 0

    with pytest.raises(TxnAborted) as info:
        await client.txn([KVOp.set(b, b"2"), KVOp.cas(a, b"2", index=0)])
    assert [e.op_index for e in info.value.errors] == [1]
    assert "index is stale" in info.value.errors[0].what
    assert info.value.status == 409
    pair = await client.kv_get(b)
    assert pair is not None
    assert pair.value == b"1", "a rolled-back transaction must not apply its other operations"

    await client.txn(
        [
            KVOp.check_index(a, index=created.modify_index),
            KVOp.cas(b, b"3", index=pair.modify_index),
        ]
    )
    with pytest.raises(TxnAborted):
        await client.txn([KVOp.delete_cas(a, index=created.modify_index + 1000)])
    await client.txn([KVOp.delete_cas(a, index=created.modify_index)])
    assert await client.kv_get(a) is None
    with pytest.raises(TxnAborted) as missing:
        await client.txn([KVOp.check_index(a, index=created.modify_index)])
    assert "doesn't exist" in missing.value.errors[0].what


@pytest.mark.integration
async def test_txn_operation_limit(client: ConsulClient, consul_prefix: str) -> None:
    ops = [KVOp.set(f"{consul_prefix}k{i:03d}", b"x") for i in range(MAX_TXN_OPS)]
    assert len((await client.txn(ops)).results) == MAX_TXN_OPS
    too_many = [*ops, KVOp.set(consul_prefix + "one-more", b"x")]
    with pytest.raises(TxnTooLarge, match=r"at most 64 operations, this one has 65: split it"):
        await client.txn(too_many)
    # The agent itself agrees on the limit: bypass the client-side check.
    payload = [op.to_json() for op in too_many]
    with pytest.raises(TxnTooLarge, match="413"):
        await client.request("PUT", "/v1/txn", json_body=payload)


@pytest.mark.integration
async def test_leader(client: ConsulClient) -> None:
    assert (await client.leader()).startswith("127.0.0.1:")


# --- failures and the blocking-query rules, against scripted answers ------------------------


async def test_unreachable_consul_names_the_address() -> None:
    port = free_port()
    async with ConsulClient(f"127.0.0.1:{port}", timeout=2) as c:
        with pytest.raises(ConsulUnavailable) as info:
            await c.kv_get("x")
    message = str(info.value)
    assert f"http://127.0.0.1:{port}" in message
    assert "check that Consul is running" in message
    assert info.value.status is None


def scripted(
    answers: list[Callable[[httpx.Request], httpx.Response]], seen: list[httpx.Request]
) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if not answers:
            raise AssertionError(f"unexpected request {request.url}")
        return answers.pop(0)(request)

    return httpx.MockTransport(handler)


def test_addresses() -> None:
    assert base_url("127.0.0.1:8500") == "http://127.0.0.1:8500"
    assert base_url("consul:8501", https=True) == "https://consul:8501"
    assert base_url("https://consul:8501/") == "https://consul:8501"
    with pytest.raises(ValueError, match="use http:// or https://"):
        base_url("unix:///tmp/consul.sock")
    with pytest.raises(ValueError, match="empty Consul address"):
        base_url(" ")


async def test_a_closed_client_says_so() -> None:
    c = ConsulClient()
    await c.aclose()
    with pytest.raises(ConsulClientClosed, match="is closed"):
        await c.kv_get("k")


def kv_answer(
    index: int, value: bytes = b"v", status: int = 200
) -> Callable[[httpx.Request], httpx.Response]:
    body: Any = [{"Key": "p/k", "Value": base64.b64encode(value).decode(), "ModifyIndex": index}]
    return lambda _req: httpx.Response(
        status, headers={"X-Consul-Index": str(index)}, content=json.dumps(body).encode()
    )


def failure(status: int, text: str = "boom") -> Callable[[httpx.Request], httpx.Response]:
    return lambda _req: httpx.Response(status, content=text.encode())


def connect_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


async def test_watch_resets_when_the_index_goes_backwards() -> None:
    seen: list[httpx.Request] = []
    answers = [kv_answer(10, b"a"), kv_answer(10, b"a"), kv_answer(5, b"b"), kv_answer(5, b"b")]
    async with ConsulClient(transport=scripted(answers, seen)) as c:
        watch = c.kv_watch("p/", wait=1)
        try:
            first = await anext(watch)
            second = await anext(watch)
        finally:
            await watch.aclose()
    assert (first.index, second.index) == (10, 5)
    assert second.value[0].value == b"b"
    indexes = [r.url.params.get("index") for r in seen]
    # 0 -> 10; blocks on 10 (no change, not yielded); 5 < 10 resets to 0 (not yielded);
    # the fresh read at 0 answers 5, which is yielded.
    assert indexes == [None, "10", "10", None]


async def test_watch_retries_with_backoff_and_reports_recovery() -> None:
    seen: list[httpx.Request] = []
    answers = [kv_answer(3), connect_error, failure(500, "No cluster leader"), kv_answer(4)]
    errors: list[tuple[ConsulError, float]] = []
    recovered: list[bool] = []
    backoff = Backoff(initial=0.01, maximum=0.02)
    async with ConsulClient(transport=scripted(answers, seen)) as c:
        watch = c.kv_watch(
            "p/",
            wait=1,
            on_error=lambda exc, delay: errors.append((exc, delay)),
            on_recover=lambda: recovered.append(True),
            backoff=backoff,
        )
        try:
            with anyio.fail_after(5):
                assert (await anext(watch)).index == 3
                assert (await anext(watch)).index == 4
        finally:
            await watch.aclose()
    assert [type(e) for e, _ in errors] == [ConsulUnavailable, ConsulUnavailable]
    assert "No cluster leader" in str(errors[1][0])
    assert all(0 < delay <= 0.02 for _, delay in errors)
    assert recovered == [True]
    assert backoff.attempts == 0, "a success resets the backoff"
    # After a failure the query does not block: Consul may be back with other indexes.
    assert [r.url.params.get("index") for r in seen] == [None, "3", None, None]


async def test_watch_raises_on_a_bad_request() -> None:
    seen: list[httpx.Request] = []
    async with ConsulClient(transport=scripted([failure(400, "bad")], seen)) as c:
        watch = c.kv_watch("p/", wait=1)
        try:
            with pytest.raises(ConsulError, match=r"rejected GET /v1/kv/p/ \(400: bad\)"):
                await anext(watch)
        finally:
            await watch.aclose()


async def test_token_and_permission_denied() -> None:
    seen: list[httpx.Request] = []
    answers = [failure(403, "Permission denied")]
    async with ConsulClient(token="s3cret", transport=scripted(answers, seen)) as c:
        with pytest.raises(ConsulPermissionDenied, match="ACL token"):
            await c.kv_put("k", b"v")
    assert seen[0].headers["X-Consul-Token"] == "s3cret"


async def test_blocking_query_parameters() -> None:
    seen: list[httpx.Request] = []
    async with ConsulClient(datacenter="dc2", transport=scripted([kv_answer(7)], seen)) as c:
        result = await c.kv_list("p/", index=6, wait=2.5, consistency="stale")
    assert result.index == 7
    params = seen[0].url.params
    assert params["index"] == "6"
    assert params["wait"] == "2500ms"
    assert params["dc"] == "dc2"
    assert "stale" in params
    assert "recurse" in params
