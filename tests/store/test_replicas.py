"""Two meshd replicas on one Consul: each has its own client and ConsulStore, as separate
processes would. They converge through Consul, and compare-and-set keeps racing writers
from both winning."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial

import anyio
import pytest

from meshd.errors import Conflict
from meshd.store.base import WriteResult
from meshd.store.consul import ConsulStore
from registry.consul_http import ConsulClient
from tests.store.helpers import vs_body, vs_key, watching
from tests.support.components import ConsulAgent

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def replicas(
    consul_agent: ConsulAgent, consul_prefix: str
) -> AsyncGenerator[tuple[ConsulStore, ConsulStore], None]:
    a = ConsulStore(ConsulClient(consul_agent.http_addr), consul_prefix, owns_client=True)
    b = ConsulStore(ConsulClient(consul_agent.http_addr), consul_prefix, owns_client=True)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_write_on_one_replica_reaches_the_others_watch_within_a_second(
    replicas: tuple[ConsulStore, ConsulStore],
) -> None:
    a, b = replicas
    async with watching(b) as states:
        with anyio.fail_after(10):
            initial = await anext(states)
        assert initial.resources == {}
        started = time.monotonic()
        await a.put(vs_key(), vs_body(), actor="replica-a")
        with anyio.fail_after(1):
            state = await anext(states)
            while vs_key() not in state.resources:
                state = await anext(states)
        elapsed = time.monotonic() - started
    assert state.resources[vs_key()].body == vs_body()
    assert state.resources[vs_key()].updated_by == "replica-a"
    assert elapsed < 1


async def race(*writers: Callable[[], Awaitable[WriteResult]]) -> tuple[int, int]:
    """Start the writers together; return (wins, conflicts)."""
    go = anyio.Event()
    wins = conflicts = 0

    async def run(write: Callable[[], Awaitable[WriteResult]]) -> None:
        nonlocal wins, conflicts
        await go.wait()
        try:
            await write()
        except Conflict:
            conflicts += 1
        else:
            wins += 1

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for write in writers:
                tg.start_soon(run, write)
            go.set()
    return wins, conflicts


async def test_racing_conditional_writes_have_exactly_one_winner(
    replicas: tuple[ConsulStore, ConsulStore],
) -> None:
    a, b = replicas
    key = vs_key()
    for round_ in range(10):
        current = await a.get(key)
        expected = current.revision if current is not None else 0
        wins, conflicts = await race(
            partial(a.put, key, vs_body(weight=round_), actor="a", expected_revision=expected),
            partial(b.put, key, vs_body(weight=50 + round_), actor="b", expected_revision=expected),
        )
        assert (wins, conflicts) == (1, 1), f"round {round_}"
        stored = await b.get(key)
        assert stored is not None
        assert stored.revision == expected + 1
    history = await a.history(key)
    assert [h.revision for h in history] == list(range(1, 11))


async def test_racing_creates_have_exactly_one_winner(
    replicas: tuple[ConsulStore, ConsulStore],
) -> None:
    a, b = replicas
    wins, conflicts = await race(
        lambda: a.put(vs_key(), vs_body(weight=10), actor="a", expected_revision=0),
        lambda: b.put(vs_key(), vs_body(weight=20), actor="b", expected_revision=0),
    )
    assert (wins, conflicts) == (1, 1)
    assert [h.operation for h in await a.history(vs_key())] == ["create"]


async def test_racing_unconditional_writes_all_land_in_order(
    replicas: tuple[ConsulStore, ConsulStore],
) -> None:
    a, b = replicas
    await a.put(vs_key(), vs_body(weight=0), actor="a")
    wins, conflicts = await race(
        lambda: a.put(vs_key(), vs_body(weight=1), actor="a"),
        lambda: b.put(vs_key(), vs_body(weight=2), actor="b"),
        lambda: a.put(vs_key(), vs_body(weight=3), actor="a"),
        lambda: b.put(vs_key(), vs_body(weight=4), actor="b"),
    )
    # Without a precondition the last writer wins, as with one sqlite store: a lost race
    # is retried on the fresh revision instead of being reported.
    assert (wins, conflicts) == (4, 0)
    history = await b.history(vs_key())
    assert [h.revision for h in history] == [1, 2, 3, 4, 5]
    final = await a.get(vs_key())
    assert final is not None
    assert final.body == history[-1].body
