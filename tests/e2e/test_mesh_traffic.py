"""The data plane's acceptance list, end to end with real processes on loopback: one
``meshd serve``, a sidecar per service instance, the test backends behind them
(``tests.support.apps``), and the test playing the ``client`` app, which calls the
others through its sidecar's outbound listener (``HTTP_PROXY`` style) or, for TCP, its
``--upstream`` port. Every hop between sidecars is mTLS (the inbound ports are STRICT,
except where a test says otherwise).

One mesh serves the whole module:

========  ==========================================  ====================================
service   backend                                     rules
========  ==========================================  ====================================
web       HTTP echo v1 (127.0.0.2), v2 (127.0.0.3)    subsets v1/v2, 80/20 split
flaky     HTTP echo failing 50% of requests (503)     retries on 5xx: 0, 3 or 10 by header
slow      HTTP echo answering after 2 s               timeout 300ms
ws        WebSocket echo                              -
tcpecho   TCP echo (``--protocol tcp``)               -
client    (the test)                                  ``--upstream tcpecho=<port>``
========  ==========================================  ====================================
"""

from __future__ import annotations

import base64
import collections
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.e2e.mesh import Backend, Mesh, shared_port
from tests.sidecar.sidecar_process import SidecarProcess
from tests.support.apps import FrameReader, ws_accept, ws_frame
from tests.support.processes import LOOPBACK, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SPLIT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {{host: web, subset: v1}}
      weight: {v1}
    - destination: {{host: web, subset: v2}}
      weight: {v2}
"""

RULES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: [flaky]
  http:
  - name: no-retries
    match: [{headers: {x-retries: {exact: "0"}}}]
    retries: {attempts: 0}
    route: [{destination: {host: flaky}}]
  - name: three-retries
    match: [{headers: {x-retries: {exact: "3"}}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: flaky}}]
  - name: ten-retries
    retries: {attempts: 10, retryOn: 5xx}
    route: [{destination: {host: flaky}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow}
spec:
  hosts: [slow]
  http:
  - timeout: 300ms
    route: [{destination: {host: slow}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web-v1-permissive}
spec:
  selector: {matchLabels: {app: web, version: v1}}
  mtls: {mode: PERMISSIVE}
---""" + SPLIT.format(v1=80, v2=20)


@dataclass
class Topology:
    mesh: Mesh
    client: SidecarProcess
    web: dict[str, SidecarProcess]
    flaky: SidecarProcess
    ws: SidecarProcess
    tcpecho: SidecarProcess
    tcp_port: int
    web_port: int


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with Mesh(tmp_path_factory.mktemp("mesh")) as mesh:
        web_port = shared_port("127.0.0.2", "127.0.0.3")
        apps: dict[str, Backend] = {
            v: mesh.backend(f"web-{v}", host=host, port=web_port, version=v)
            for v, host in (("v1", "127.0.0.2"), ("v2", "127.0.0.3"))
        }
        web = {v: mesh.sidecar("web", app=app, labels={"version": v}) for v, app in apps.items()}
        flaky = mesh.sidecar("flaky", app=mesh.backend("flaky", fail_rate=0.5))
        mesh.sidecar("slow", app=mesh.backend("slow", delay_s=2.0))
        ws = mesh.sidecar("ws", app=mesh.backend("ws", kind="ws"))
        tcpecho = mesh.sidecar("tcpecho", app=mesh.backend("tcpecho", kind="tcp"), protocol="tcp")
        tcp_port = free_port()
        client = mesh.sidecar("client", upstreams={"tcpecho": tcp_port})
        mesh.wait_ready()
        mesh.apply(RULES)
        mesh.wait_synced()
        topology = Topology(mesh, client, web, flaky, ws, tcpecho, tcp_port, web_port)
        with mesh.http_client(client) as http:
            mesh.eventually(
                lambda: (
                    {http.get("http://web/").json()["version"] for _ in range(30)} == {"v1", "v2"}
                ),
                "the client reaching both web versions",
            )
        yield topology


def requests_total(sidecar: SidecarProcess, **labels: str) -> int:
    """The sum of ``istio_requests_total`` samples whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        int(float(value))
        for name, value in sidecar.metrics().items()
        if name.startswith("istio_requests_total{") and all(w in name for w in want)
    )


# --- (a) retries -----------------------------------------------------------------------------


def success_rate(
    topo: Topology, retries: str, count: int, workers: int = 3
) -> tuple[float, collections.Counter[int]]:
    """``count`` requests to flaky (``workers`` at a time: the retry budget allows at least
    3 concurrent retries, so none is refused for budget); the share of 200s."""
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    left = [count]

    def worker() -> None:
        with topo.mesh.http_client(topo.client) as http:
            while True:
                with lock:
                    if not left[0]:
                        return
                    left[0] -= 1
                status = http.get("http://flaky/", headers={"x-retries": retries}).status_code
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(statuses.values()) == count, statuses
    return statuses[200] / count, statuses


@pytest.mark.slow
def test_retries_turn_a_half_failing_upstream_into_99_percent_success(topo: Topology) -> None:
    # Without retries the upstream fails about half of the requests...
    bare, bare_statuses = success_rate(topo, "0", 200)
    assert 0.35 <= bare <= 0.65, bare_statuses
    assert set(bare_statuses) == {200, 503}
    # ...with 3 retries (4 tries) a request fails only when all fail: 0.5**4 = 6.25%...
    attempts_before = requests_total(topo.flaky, reporter="destination")
    three, three_statuses = success_rate(topo, "3", 200)
    assert 0.88 <= three <= 0.99, three_statuses
    # ...and with 10 retries 0.5**11 = 0.05%: >= 99% succeed.
    ten, ten_statuses = success_rate(topo, "10", 500)
    assert ten >= 0.99, ten_statuses
    attempts = requests_total(topo.flaky, reporter="destination") - attempts_before
    # Every retry reached the upstream: about 2 tries per request on average.
    assert attempts > 1.6 * 700, attempts
    print(
        f"flaky: no retries {bare:.1%} of 200, 3 retries {three:.1%} of 200, "
        f"10 retries {ten:.1%} of 500; {attempts} tries for those 700 requests"
    )


# --- (b) timeout -----------------------------------------------------------------------------


def test_a_route_timeout_answers_504_on_time(topo: Topology) -> None:
    elapsed = []
    with topo.mesh.http_client(topo.client) as http:
        for _ in range(5):
            t0 = time.monotonic()
            reply = http.get("http://slow/")
            elapsed.append(time.monotonic() - t0)
            assert reply.status_code == 504, reply.text
            assert "upstream request timeout" in reply.text
    assert all(0.29 <= e <= 0.6 for e in elapsed), elapsed
    print("timeout 300ms: 504 after " + ", ".join(f"{e * 1000:.0f}" for e in elapsed) + " ms")


# --- (c) WebSocket ---------------------------------------------------------------------------


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of a response head; (head, the bytes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before the response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_websocket_echo_through_two_sidecars(topo: Topology) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((LOOPBACK, topo.client.outbound_port), timeout=10) as sock:
        sock.sendall(
            b"GET http://ws/chat HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key.encode() + b"\r\n\r\n"
        )
        head, rest = read_head(sock)
        lines = head.decode().split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101 "), head
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert fields["upgrade"].lower() == "websocket"
        assert fields["sec-websocket-accept"] == ws_accept(key)
        assert fields["x-instance"] == "ws"  # the server app's 101, through both sidecars
        reader = FrameReader()
        reader.feed(rest)
        big = os.urandom(300_000)
        sent = [(0x1, b"hello through the mesh"), (0x2, big), (0x1, "\u00e9t\u00e9".encode())]
        received: list[tuple[int, bytes]] = []
        for opcode, payload in sent:
            sock.sendall(ws_frame(opcode, payload, mask=True))
        sock.sendall(ws_frame(0x8, b"\x03\xe8", mask=True))  # close, 1000
        while True:
            frames = reader.frames()
            received += frames
            if any(op == 0x8 for op, _ in frames):
                break
            chunk = sock.recv(65536)
            assert chunk, f"closed before the close frame; got {len(received)} frames"
            reader.feed(chunk)
        assert received == [*sent, (0x8, b"\x03\xe8")]
        # After the close handshake the server ends the connection, and so does the tunnel.
        sock.settimeout(5)
        assert sock.recv(1) == b""
    # The upgraded request is one request in Istio's metrics, counted when the tunnel ends,
    # on both sides, with the 101.
    for sidecar in (topo.client, topo.ws):
        wait_for_metric(sidecar, "istio_requests_total{reporter=", 'response_code="101"', "ws")


def wait_for_metric(sidecar: SidecarProcess, prefix: str, *needles: str) -> str:
    """The first metric line starting with ``prefix`` that holds every needle, as
    ``name value`` (polled: the sample is written when the connection ends)."""
    deadline = time.monotonic() + 5
    while True:
        for name, value in sidecar.metrics().items():
            if name.startswith(prefix) and all(n in name for n in needles):
                return f"{name} {value}"
        assert time.monotonic() < deadline, f"no {prefix} sample with {needles}"
        time.sleep(0.05)


# --- (d) TCP ---------------------------------------------------------------------------------


def tcp_round_trip(port: int, payload: bytes) -> bytes:
    """Send ``payload`` (while reading), half-close, then read until the server's end."""
    received = bytearray()
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:

        def read() -> None:
            while chunk := sock.recv(65536):
                received.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # our half-close: the echo must still come back
        reader.join(20)
        assert not reader.is_alive(), f"no end of stream after {len(received)} bytes"
    return bytes(received)


def test_tcp_echo_with_half_close_through_two_sidecars(topo: Topology) -> None:
    payload = os.urandom(1 << 20)
    echoed = tcp_round_trip(topo.tcp_port, payload)
    assert len(echoed) == len(payload)
    assert echoed == payload
    # A client that half-closes at once still gets the server's end of stream.
    assert tcp_round_trip(topo.tcp_port, b"") == b""
    # Several connections at once each get their own bytes back.
    results: dict[int, bytes] = {}
    payloads = {i: os.urandom(50_000 + i) for i in range(4)}

    def one(i: int) -> None:
        results[i] = tcp_round_trip(topo.tcp_port, payloads[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == payloads
    # Istio's TCP metrics, on both sides: connections opened and closed, bytes each way.
    for sidecar in (topo.client, topo.tcpecho):
        closed = wait_for_metric(sidecar, "istio_tcp_connections_closed_total{", "tcpecho")
        assert float(closed.rsplit(" ", 1)[1]) >= 6, closed
        sent = wait_for_metric(sidecar, "istio_tcp_sent_bytes_total{", "tcpecho")
        assert float(sent.rsplit(" ", 1)[1]) >= len(payload), sent


# --- (e) route change under load --------------------------------------------------------------


@dataclass
class Load:
    """Client threads calling web in a loop; every outcome is kept with its start time."""

    mesh: Mesh
    client: SidecarProcess
    results: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self) -> None:
        with self.mesh.http_client(self.client) as http:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    reply = http.get("http://web/")
                    if reply.status_code == 200:
                        outcome = str(reply.json()["version"])
                    else:
                        outcome = f"HTTP {reply.status_code}: {reply.text[:100]}"
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    self.results.append((t0, outcome))

    def count_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for t0, _ in self.results if t0 >= t)

    def wait_for(self, n: int, since: float, what: str) -> None:
        self.mesh.eventually(lambda: self.count_since(since) >= n, what, timeout=30)

    def share_v1(self, start: float, end: float) -> tuple[float, int]:
        with self.lock:
            phase = [o for t0, o in self.results if start <= t0 < end]
        return phase.count("v1") / len(phase), len(phase)


def test_a_route_change_under_steady_load_drops_no_request(topo: Topology) -> None:
    mesh = topo.mesh
    load = Load(mesh, topo.client)
    threads = [threading.Thread(target=load.worker) for _ in range(4)]
    per_phase = 400
    t_start = time.monotonic()
    for t in threads:
        t.start()
    try:
        load.wait_for(per_phase, t_start, "requests at 80/20")
        t_apply1 = time.monotonic()
        t_switched1 = mesh.apply_and_wait(SPLIT.format(v1=20, v2=80), [topo.client])
        load.wait_for(per_phase, t_switched1, "requests at 20/80")
        t_apply2 = time.monotonic()
        t_switched2 = mesh.apply_and_wait(SPLIT.format(v1=80, v2=20), [topo.client])
        load.wait_for(per_phase, t_switched2, "requests at 80/20 again")
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
        if not any(t.is_alive() for t in threads):  # leave the module's split as it was
            mesh.apply(SPLIT.format(v1=80, v2=20))
    outcomes = collections.Counter(o for _, o in load.results)
    failures = {o: n for o, n in outcomes.items() if o not in ("v1", "v2")}
    assert failures == {}, failures
    # Requests that started before the apply ran on the old table, those that started
    # after the client's sidecar showed the new version on the new one (in between: either).
    before, n_before = load.share_v1(t_start, t_apply1)
    during, n_during = load.share_v1(t_switched1, t_apply2)
    after, n_after = load.share_v1(t_switched2, float("inf"))
    assert 0.72 <= before <= 0.88, (before, n_before)
    assert 0.12 <= during <= 0.28, (during, n_during)
    assert 0.72 <= after <= 0.88, (after, n_after)
    print(
        f"route change under load: {sum(outcomes.values())} requests, 0 failed; v1 share "
        f"{before:.1%} ({n_before}) -> {during:.1%} ({n_during}) -> {after:.1%} ({n_after}); "
        f"switches seen {(t_switched1 - t_apply1) * 1000:.0f} and "
        f"{(t_switched2 - t_apply2) * 1000:.0f} ms after the apply"
    )


# --- (g) smuggling ---------------------------------------------------------------------------

H = b"POST / HTTP/1.1\r\nHost: web\r\n"
SMUGGLING: dict[str, bytes] = {
    "CL+TE": H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "TE+CL": H
    + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "duplicate CL": H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "conflicting CL": H + b"Content-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    "bad chunk size": H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "obs-fold": H + b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "obs-fold in TE": H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "NUL in a header value": H + b"X-Thing: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "bad byte in a header name": H + b"X-Th(ing: a\r\nContent-Length: 0\r\n\r\n",
}


def send_raw(port: int, data: bytes, tls: ssl.SSLContext | None = None) -> tuple[bytes, bool]:
    """Send ``data``; what came back, and whether the sidecar closed the connection."""
    raw = socket.create_connection((LOOPBACK, port), timeout=5)
    sock = tls.wrap_socket(raw) if tls is not None else raw
    reply = b""
    try:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            reply += chunk
        return reply, True
    except (ConnectionResetError, ssl.SSLEOFError):
        return reply, True
    except TimeoutError:
        return reply, False
    finally:
        sock.close()


def test_each_smuggling_shape_gets_400_at_real_sidecars(topo: Topology) -> None:
    target = topo.web["v1"]  # PERMISSIVE (PeerAuthentication): plaintext and mTLS
    tls = topo.mesh.workload_tls("client")
    listeners: dict[str, Callable[[bytes], tuple[bytes, bool]]] = {
        "outbound": lambda d: send_raw(topo.client.outbound_port, d),
        "inbound plaintext": lambda d: send_raw(target.inbound_port, d),
        "inbound mTLS": lambda d: send_raw(target.inbound_port, d, tls),
    }

    def forwarded() -> int:
        """Requests the web apps answered (anything but the sidecars' own 400s)."""
        return sum(
            requests_total(s, reporter="destination")
            - requests_total(s, reporter="destination", response_code="400")
            for s in topo.web.values()
        )

    before = forwarded()
    failures = []
    for listener, send in listeners.items():
        for shape, data in SMUGGLING.items():
            reply, closed = send(data)
            status = reply.split(b"\r\n", 1)[0]
            if not (
                status.startswith(b"HTTP/1.1 400 ") and closed and reply.count(b"HTTP/1.") == 1
            ):
                failures.append(f"{listener}, {shape}: {reply[:100]!r} closed={closed}")
    assert failures == []
    assert forwarded() == before  # nothing reached an app
    # The sidecars serve on: a well-formed request on each listener still works.
    good = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
    for listener, send in listeners.items():
        reply, _ = send(good)
        assert reply.startswith(b"HTTP/1.1 200 "), (listener, reply[:200])
    assert re.search(rb'"version": "v[12]"', reply)
