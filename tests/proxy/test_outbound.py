"""The outbound HTTP listener in-process, against real test backends on loopback:
routing by Host and absolute-form targets, header matches, redirects and direct
responses, header operations, rewrites, no route, no endpoints, passthrough, CONNECT,
retries, timeouts, keep-alive reuse, and the forwarding headers."""

from __future__ import annotations

import gc
import re
import time
from pathlib import Path

import trio

from meshd.compile import snapshot as s
from tests.proxy.support import (
    NO_RETRIES,
    Client,
    cluster,
    endpoint,
    forward,
    get,
    raw_exchange,
    route,
    running_proxy,
    snapshot,
    vhost,
)
from tests.support.apps import HttpApp, TcpEchoApp


def plain(name: str, *ports: int, subset: str | None = None) -> s.Cluster:
    """A cluster of plaintext endpoints (apps without a sidecar)."""
    return cluster(name, [endpoint(p) for p in ports], subset=subset, tls="DISABLE")


def test_routes_by_host_and_by_absolute_form_target(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reviews, ratings = HttpApp("reviews-1"), HttpApp("ratings-1")
            rv = plain("reviews", await reviews.start(nursery))
            ra = plain("ratings", await ratings.start(nursery))
            snap = snapshot(
                clusters=[rv, ra],
                vhosts=[
                    vhost("reviews", [route(forward(rv))]),
                    vhost("ratings", [route(forward(ra))]),
                ],
            )
            async with running_proxy(snap, None) as proxy:
                by_host = await get(proxy.outbound, "/a?x=1", host="reviews")
                assert by_host.status == 200
                assert by_host.json()["instance"] == "reviews-1"
                assert by_host.json()["target"] == "/a?x=1"
                # What an app behind HTTP_PROXY sends: the absolute form wins over Host.
                absolute = await get(
                    proxy.outbound, "http://ratings.default:9080/b", host="ignored"
                )
                assert absolute.json()["instance"] == "ratings-1"
                assert absolute.json()["target"] == "/b"
                fqdn = await get(proxy.outbound, "/", host="reviews.default.svc.cluster.local:9080")
                assert fqdn.json()["instance"] == "reviews-1"
                # Paths are forwarded normalised, as routing and policy saw them.
                dotted = await get(proxy.outbound, "/public/../admin/%7Eme", host="reviews")
                assert dotted.json()["target"] == "/admin/~me"
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_header_match_routes_to_its_subset(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            v1, v2 = HttpApp("r-v1", "v1"), HttpApp("r-v2", "v2")
            c1 = plain("reviews", await v1.start(nursery), subset="v1")
            c2 = plain("reviews", await v2.start(nursery), subset="v2")
            match = s.RouteMatch(
                headers=(s.HeaderMatch("end-user", s.StringMatch("exact", "jason")),)
            )
            routes = [route(forward(c2), match, name="jason"), route(forward(c1), name="default")]
            snap = snapshot(clusters=[c1, c2], vhosts=[vhost("reviews", routes)])
            async with running_proxy(snap, None) as proxy:
                client = Client(proxy.outbound)
                for _ in range(5):
                    r = await client.request(headers=[("end-user", "jason")])
                    assert r.json()["version"] == "v2"
                    r = await client.request(headers=[("end-user", "alice")])
                    assert r.json()["version"] == "v1"
                await client.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_redirect_direct_response_and_header_operations(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            app = HttpApp("r")
            c = plain("reviews", await app.start(nursery))
            redirect = route(
                s.RedirectAction(uri="/new", authority="other:8080", status=302),
                s.RouteMatch(uri=s.StringMatch("prefix", "/old")),
            )
            direct = route(
                s.DirectResponseAction(status=418, body="short and stout"),
                s.RouteMatch(uri=s.StringMatch("exact", "/teapot")),
                response_headers=s.HeaderOps(set=(("x-tea", "yes"),)),
            )
            ops = route(
                forward(c, rewrite=s.Rewrite(uri="/v2/", authority="reviews.internal")),
                s.RouteMatch(uri=s.StringMatch("prefix", "/api/")),
                request_headers=s.HeaderOps(
                    set=(("x-set", "route"),), add=(("x-add", "1"),), remove=("x-drop",)
                ),
                response_headers=s.HeaderOps(set=(("x-resp", "yes"),), remove=("x-version",)),
            )
            snap = snapshot(clusters=[c], vhosts=[vhost("reviews", [redirect, direct, ops])])
            async with running_proxy(snap, None) as proxy:
                r = await get(proxy.outbound, "/old/x?q=1", host="reviews")
                assert r.status == 302
                assert r.headers["location"] == "http://other:8080/new?q=1"
                assert app.requests == 0
                r = await get(proxy.outbound, "/teapot", host="reviews")
                assert (r.status, r.body, r.headers["x-tea"]) == (418, b"short and stout", "yes")
                r = await get(
                    proxy.outbound,
                    "/api/users?id=7",
                    host="reviews",
                    headers=[("x-set", "client"), ("x-drop", "me"), ("x-add", "0")],
                )
                info = r.json()
                headers = info["headers"]
                assert info["target"] == "/v2/users?id=7"
                assert ["host", "reviews.internal"] in headers
                assert ["x-set", "route"] in headers
                assert ["x-set", "client"] not in headers
                assert not [h for h in headers if h[0] == "x-drop"]
                assert [v for n, v in headers if n == "x-add"] == ["0", "1"]
                assert r.headers["x-resp"] == "yes"
                assert "x-version" not in r.headers
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_no_route_no_endpoints_and_registry_only(tmp_path: Path) -> None:
    async def main() -> None:
        empty = plain("ratings")
        only_v1 = s.RouteMatch(uri=s.StringMatch("prefix", "/v1"))
        snap = snapshot(
            clusters=[empty],
            vhosts=[vhost("ratings", [route(forward(empty), only_v1)])],
            allow_any=False,
        )
        async with running_proxy(snap, None) as proxy:
            assert (await get(proxy.outbound, "/other", host="ratings")).status == 404
            r = await get(proxy.outbound, "/v1", host="ratings")
            assert (r.status, r.body) == (503, b"no healthy upstream")
            assert (await get(proxy.outbound, "/", host="example.com")).status == 404
            reply = await raw_exchange(
                proxy.outbound, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
            )
            assert reply.startswith(b"HTTP/1.1 403")

    trio.run(main)


def test_allow_any_passes_unknown_hosts_and_connect_through(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            outside = HttpApp("outside")
            port = await outside.start(nursery)
            echo = TcpEchoApp()
            echo_port = await echo.start(nursery)
            async with running_proxy(snapshot(), None) as proxy:
                r = await get(proxy.outbound, f"http://127.0.0.1:{port}/x", host="whatever")
                assert r.json()["instance"] == "outside"
                assert ["host", f"127.0.0.1:{port}"] in r.json()["headers"]
                # HTTPS through the proxy: CONNECT, then bytes both ways.
                stream = await trio.open_tcp_stream("127.0.0.1", proxy.outbound)
                await stream.send_all(
                    b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\nearly"
                    % (echo_port, echo_port)
                )
                got = b""
                while b"early" not in got:
                    got += await stream.receive_some(1024)
                assert got.startswith(b"HTTP/1.1 200")
                await stream.send_all(b" and late")
                await stream.send_eof()
                while True:
                    more = await stream.receive_some(1024)
                    if not more:
                        break
                    got += more
                assert got.endswith(b"early and late")
                await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_forwarding_headers_and_hop_by_hop_fields(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            app = HttpApp("r")
            c = plain("reviews", await app.start(nursery))
            async with running_proxy(
                snapshot(clusters=[c], vhosts=[vhost("reviews", [route(forward(c))])]), None
            ) as proxy:
                r = await get(
                    proxy.outbound,
                    "/",
                    host="reviews",
                    headers=[
                        ("connection", "keep-alive, x-secret"),
                        ("x-secret", "hop"),
                        ("keep-alive", "timeout=5"),
                        ("proxy-connection", "keep-alive"),
                        ("te", "trailers"),
                        ("x-forwarded-for", "203.0.113.9"),
                        ("x-end", "kept"),
                    ],
                )
                names = [n for n, _ in r.json()["headers"]]
                for hop in ("connection", "x-secret", "keep-alive", "proxy-connection", "te"):
                    assert hop not in names
                headers = dict(r.json()["headers"])
                assert headers["x-end"] == "kept"
                assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
                assert headers["x-forwarded-proto"] == "http"
                assert re.fullmatch(
                    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                    headers["x-request-id"],
                )
                assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", headers["traceparent"])
                tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                r = await get(
                    proxy.outbound,
                    "/",
                    host="reviews",
                    headers=[("x-request-id", "abc"), ("traceparent", tp), ("tracestate", "k=v")],
                )
                headers = dict(r.json()["headers"])
                assert (headers["x-request-id"], headers["traceparent"], headers["tracestate"]) == (
                    "abc",
                    tp,
                    "k=v",
                )
                r = await get(
                    proxy.outbound,
                    "/",
                    host="reviews",
                    headers=[("traceparent", "garbage"), ("tracestate", "k=v")],
                )
                headers = dict(r.json()["headers"])
                assert headers["traceparent"] != "garbage"
                assert "tracestate" not in headers
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_keep_alive_connections_are_reused_both_sides(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            app = HttpApp("r")
            c = plain("reviews", await app.start(nursery))
            async with running_proxy(
                snapshot(clusters=[c], vhosts=[vhost("reviews", [route(forward(c))])]), None
            ) as proxy:
                client = Client(proxy.outbound)
                for i in range(50):
                    r = await client.request("POST", f"/{i}", body=b"x" * i)
                    assert r.json()["body_size"] == i
                assert client.connections == 1
                assert app.connections == 1
                assert app.requests == 50
                await client.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_retries_turn_a_half_failing_upstream_into_successes(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            flaky = [HttpApp(f"flaky-{i}", fail_rate=0.5, seed=i) for i in range(3)]
            ports = [await a.start(nursery) for a in flaky]
            c = plain("reviews", *ports)
            # attempts: 8 retries leave 0.5**9 = 0.2 % failing; 3 clients at a time stay
            # within the retry budget's floor (3 concurrent retries).
            policy = s.RetryPolicy(attempts=8, retry_on=("5xx",))
            snap = snapshot(
                clusters=[c], vhosts=[vhost("reviews", [route(forward(c, retries=policy))])]
            )
            async with running_proxy(snap, None) as proxy:
                ok = 0
                clients = [Client(proxy.outbound) for _ in range(3)]

                async def worker(client: Client) -> None:
                    nonlocal ok
                    for _ in range(170):
                        r = await client.request("POST", "/", body=b"payload")
                        ok += r.status == 200
                        if r.status == 200:
                            assert r.json()["body_size"] == 7  # the body was sent again
                    await client.aclose()

                async with trio.open_nursery() as workers:
                    for client in clients:
                        workers.start_soon(worker, client)
                assert ok >= 0.99 * 510, ok
                assert sum(a.failures for a in flaky) > 100
                budget = proxy.state.budgets.get(c.name)
                assert budget.active_requests == 0
                assert budget.active_retries == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_without_retries_a_failure_is_passed_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            app = HttpApp("r")
            c = plain("reviews", await app.start(nursery))
            snap = snapshot(
                clusters=[c], vhosts=[vhost("reviews", [route(forward(c, retries=NO_RETRIES))])]
            )
            async with running_proxy(snap, None) as proxy:
                r = await get(proxy.outbound, "/status/503", host="reviews")
                assert r.status == 503
                assert app.requests == 1
                # A refused connection: 503 with Envoy's words.
                dead = plain("reviews", free_port_closed())
                proxy.apply(
                    snapshot(
                        version="v2",
                        clusters=[dead],
                        vhosts=[vhost("reviews", [route(forward(dead, retries=NO_RETRIES))])],
                    )
                )
                r = await get(proxy.outbound, "/", host="reviews")
                assert r.status == 503
                assert r.body.startswith(b"upstream connect error")
            nursery.cancel_scope.cancel()

    trio.run(main)


def free_port_closed() -> int:
    from tests.proxy.support import free_port

    return free_port()


def test_route_timeout_answers_504_on_time(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            app = HttpApp("slow")
            c = plain("reviews", await app.start(nursery))
            retry = s.RetryPolicy(attempts=3, per_try_timeout_ms=100, retry_on=("5xx",))
            routes = [
                route(
                    forward(c, timeout_ms=300), s.RouteMatch(headers=(s.HeaderMatch("x-route"),))
                ),
                route(forward(c, timeout_ms=5000, retries=retry)),
            ]
            async with running_proxy(
                snapshot(clusters=[c], vhosts=[vhost("reviews", routes)]), None
            ) as proxy:
                t0 = time.monotonic()
                r = await get(
                    proxy.outbound, "/delay/2000", host="reviews", headers=[("x-route", "1")]
                )
                took = time.monotonic() - t0
                assert (r.status, r.body) == (504, b"upstream request timeout")
                assert 0.25 <= took < 1.0, took
                # Per-try timeouts are retried (4 tries of 100 ms), then 504.
                t0 = time.monotonic()
                r = await get(proxy.outbound, "/delay/1000", host="reviews")
                took = time.monotonic() - t0
                assert r.status == 504
                assert 0.35 <= took < 1.5, took
                # A fast request on the same route is fine.
                assert (await get(proxy.outbound, "/", host="reviews")).status == 200
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_forwarded_request_leaves_no_reference_cycles() -> None:
    # Objects in a cycle wait for the cyclic garbage collector instead of being freed at
    # once: a cycle per request made the client sidecar run a collection every few
    # requests (a closure that referred to the request's own Plan).
    async def main() -> tuple[int, int]:
        async with trio.open_nursery() as nursery:
            app = HttpApp("reviews-1")
            rv = plain("reviews", await app.start(nursery))
            snap = snapshot(clusters=[rv], vhosts=[vhost("reviews", [route(forward(rv))])])
            async with running_proxy(snap, None) as proxy:
                client = Client(proxy.outbound)
                await client.request()  # connections and pools are made: not counted
                gc.collect()
                gc.disable()
                try:
                    requests = 200
                    for _ in range(requests):
                        assert (await client.request()).status == 200
                    in_cycles = gc.collect()
                finally:
                    gc.enable()
                await client.aclose()
            nursery.cancel_scope.cancel()
        return requests, in_cycles

    requests, in_cycles = trio.run(main)
    assert in_cycles < requests, f"{in_cycles} objects in cycles after {requests} requests"
