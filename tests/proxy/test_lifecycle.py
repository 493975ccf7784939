"""Live config and shutdown: a route and endpoint change under steady load drops no
request (in-flight requests finish on the config they started with, endpoints that
left are drained from the pools), and a drain lets requests in flight finish while
nothing new is accepted."""

from __future__ import annotations

import collections
from pathlib import Path

import h11
import trio

from meshd.compile import snapshot as s
from tests.proxy.support import (
    Client,
    cluster,
    endpoint,
    forward,
    get,
    route,
    running_proxy,
    snapshot,
    vhost,
)
from tests.support.apps import HttpApp


def test_config_swaps_under_load_drop_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            apps = [HttpApp(f"app-{i}", f"v{i}", delay_s=0.002) for i in range(4)]
            ports = [await a.start(nursery) for a in apps]

            def version(n: int, live: list[int]) -> s.ProxySnapshot:
                c = cluster("reviews", [endpoint(ports[i]) for i in live], tls="DISABLE")
                return snapshot(
                    version=f"v{n}",
                    clusters=[c],
                    vhosts=[vhost("reviews", [route(forward(c, retries=s.RetryPolicy(0)))])],
                )

            sets = [[0, 1], [2], [1, 3], [0], [2, 3]]
            async with running_proxy(version(0, sets[0]), None) as proxy:
                statuses: collections.Counter[int] = collections.Counter()
                seen: set[str] = set()
                stop = trio.Event()

                async def worker() -> None:
                    client = Client(proxy.outbound)
                    while not stop.is_set():
                        r = await client.request("POST", "/", body=b"x" * 100)
                        statuses[r.status] += 1
                        if r.status == 200:
                            seen.add(r.json()["instance"])
                    await client.aclose()

                async with trio.open_nursery() as load:
                    for _ in range(8):
                        load.start_soon(worker)
                    for n in range(1, 26):
                        await trio.sleep(0.04)
                        proxy.apply(version(n, sets[n % len(sets)]))
                    await trio.sleep(0.1)
                    stop.set()
                assert set(statuses) == {200}, statuses
                assert sum(statuses.values()) > 200
                assert seen == {f"app-{i}" for i in range(4)}
                # Only the endpoints of the last config keep pools.
                assert set(proxy.server.ctx.pools.stats()) <= {
                    f"127.0.0.1:{ports[i]}" for i in sets[25 % len(sets)]
                }
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_drain_finishes_in_flight_requests_and_accepts_nothing_new(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            app = HttpApp("slow")
            c = cluster("reviews", [endpoint(await app.start(nursery))], tls="DISABLE")
            snap = snapshot(clusters=[c], vhosts=[vhost("reviews", [route(forward(c))])])
            async with running_proxy(snap, None) as proxy:
                idle = Client(proxy.outbound)
                assert (await idle.request()).status == 200  # now idle, kept alive
                busy = Client(proxy.outbound)
                results: dict[str, object] = {}

                async def slow() -> None:
                    reply = await busy.request("GET", "/delay/400")
                    results["status"] = reply.status
                    results["connection"] = reply.headers.get("connection")

                async with trio.open_nursery() as inner:
                    inner.start_soon(slow)
                    await trio.sleep(0.1)
                    with trio.fail_after(5):
                        left = await proxy.server.drain(3.0)
                assert left == 0
                assert results == {"status": 200, "connection": "close"}
                assert proxy.server.not_ready_reason() == "the proxy is draining"
                # The idle connection was closed; new connections are refused.
                try:
                    await idle.request()
                    raised = False
                except (trio.BrokenResourceError, OSError, h11.RemoteProtocolError):
                    raised = True
                assert raised
                try:
                    await get(proxy.outbound, "/")
                    refused = False
                except OSError:
                    refused = True
                assert refused
                await idle.aclose()
                await busy.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
