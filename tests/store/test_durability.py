"""A write that returned is durable: SIGKILL the writer right after, and it is there.

The writer is a separate process (``tests.support.store_child``) that prints ``written``
once ``put`` returned and then keeps writing; the test kills it (SIGKILL) the moment it
reads that line, so the kill also lands in the middle of a later write.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from meshd.store.base import Store
from meshd.store.factory import open_store
from tests.support.components import ConsulAgent
from tests.support.processes import REPO_ROOT
from tests.support.store_child import FIRST, body

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def kill_after_written(argv: list[str], log: Path) -> None:
    with log.open("wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, "-m", "tests.support.store_child", *argv],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO_ROOT,
        )
        async with process:
            assert process.stdout is not None
            seen = b""
            try:
                with anyio.fail_after(30):
                    while b"written\n" not in seen:
                        seen += await process.stdout.receive()
            except (anyio.EndOfStream, TimeoutError):
                process.kill()
                await process.wait()
                output = await anyio.Path(log).read_text()
                pytest.fail(f"the writer never said 'written' (stdout {seen!r}):\n{output}")
            process.kill()
            assert await process.wait() == -9, "the writer must die by SIGKILL, not exit"


async def check_survived(store: Store) -> None:
    try:
        survivor = await store.get(FIRST)
        assert survivor is not None, "a write that returned was lost"
        assert survivor.body == body(FIRST.name, 0)
        # Whatever the kill interrupted was all-or-nothing: every resource present has
        # its whole history, and the store takes new writes.
        for resource in await store.list():
            history = await store.history(resource.key)
            assert [h.revision for h in history] == list(range(1, resource.revision + 1))
            assert history[-1].body == resource.body
        again = await store.put(FIRST, body(FIRST.name, 1), actor="test")
        assert again.resource.revision == 2
    finally:
        await store.aclose()


async def test_sqlite_write_survives_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await kill_after_written(["sqlite", str(data_dir)], tmp_path / "child.log")
    store = await open_store("sqlite", data_dir=data_dir, consul_addr="", consul_token=None)
    await check_survived(store)


async def test_consul_write_survives_sigkill(
    tmp_path: Path, consul_agent: ConsulAgent, consul_prefix: str
) -> None:
    await kill_after_written(
        ["consul", consul_agent.http_addr, consul_prefix], tmp_path / "child.log"
    )
    store = await open_store(
        "consul",
        data_dir=tmp_path,
        consul_addr=consul_agent.http_addr,
        consul_token=None,
        consul_prefix=consul_prefix,
    )
    await check_survived(store)
