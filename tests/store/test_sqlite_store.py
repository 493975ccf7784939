"""What only the sqlite store does: its file, its lock, its counter, closing, and keeping
memory and disk in agreement when writes are cancelled."""

from __future__ import annotations

import random
import sqlite3
import stat
from pathlib import Path

import anyio
import pytest

from meshd.errors import StoreUnavailable
from meshd.store.factory import SQLITE_FILENAME, open_store
from meshd.store.sqlite import SqliteStore
from tests.store.helpers import vs_body, vs_key, watching

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_file_is_private_and_journaled(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = await open_store("sqlite", data_dir=data_dir, consul_addr="", consul_token=None)
    try:
        await store.put(vs_key(), vs_body(), actor="a")
    finally:
        await store.aclose()
    path = data_dir / SQLITE_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"resources", "history", "records", "audit", "meta"} <= tables


async def test_one_store_per_file(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "meshd.db")
    await first.open()
    second = SqliteStore(tmp_path / "meshd.db")
    with pytest.raises(StoreUnavailable, match="in use by another process"):
        await second.open()
    await first.aclose()
    await second.open()
    await second.aclose()


async def test_a_missing_data_directory_says_so(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "nope" / "meshd.db")
    with pytest.raises(StoreUnavailable, match=r"data directory .*nope does not exist"):
        await store.get(vs_key())


async def test_the_index_keeps_growing_across_restarts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "meshd.db")
    await store.put(vs_key(), vs_body(weight=1), actor="a")
    await store.put(vs_key(), vs_body(weight=2), actor="a")
    async with watching(store) as states:
        before = await anext(states)
    await store.aclose()

    store = SqliteStore(tmp_path / "meshd.db")
    try:
        async with watching(store) as states:
            with anyio.fail_after(10):
                reopened = await anext(states)
                assert reopened.index == before.index
                assert reopened.resources == before.resources
                await store.put(vs_key("x"), vs_body("x"), actor="a")
                after = await anext(states)
        assert after.index > before.index
    finally:
        await store.aclose()


async def test_closing_ends_watches_and_refuses_calls(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "meshd.db")
    seen = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                async for state in store.watch():
                    seen.append(state)
                    if len(seen) == 1:
                        await store.aclose()

            tg.start_soon(follow)
    assert len(seen) == 1
    with pytest.raises(StoreUnavailable, match="is closed"):
        await store.get(vs_key())
    with pytest.raises(StoreUnavailable, match="is closed"):
        await store.put(vs_key(), vs_body(), actor="a")


async def test_cancelled_writes_leave_memory_and_disk_in_agreement(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "meshd.db")
    rng = random.Random(7)
    for i in range(60):
        # Cancel at a random moment: before, during or after the commit in the worker.
        with anyio.move_on_after(rng.uniform(0, 0.0004)):
            await store.put(vs_key(f"r{i % 7}"), vs_body(f"r{i % 7}", weight=i), actor="a")
    in_memory = await store.list()
    async with watching(store) as states:
        index = (await anext(states)).index
    await store.aclose()

    store = SqliteStore(tmp_path / "meshd.db")
    try:
        assert await store.list() == in_memory
        async with watching(store) as states:
            assert (await anext(states)).index == index
        for resource in in_memory:
            history = await store.history(resource.key)
            assert [h.revision for h in history] == list(range(1, resource.revision + 1))
    finally:
        await store.aclose()
