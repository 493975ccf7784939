"""Issue 5's acceptance for health, end to end with real processes, for both registries:

    killing an app (or its sidecar) removes the instance from its peers' endpoints within
    two check intervals while requests to the service keep succeeding through the other
    instances; bringing it back restores it.

The mesh: ``meshd serve`` (``--registry embedded``; or ``--registry consul`` on a real
``consul agent -dev`` with every sidecar ``--registry consul``, registering with that
agent directly), a service ``api`` of two instances (two HTTP backends, on 127.0.0.2 and
127.0.0.3 with the same port, each behind its own sidecar checking ``http:/healthz``
every second), and a client sidecar ``web`` through which threads send steady requests
to ``api``. Then, with the time each step took measured on the client sidecar's
``/clusters`` (what its proxy balances over):

1. SIGKILL backend 1: two failed checks, reported at once -> api-1 leaves;
2. start it again: one passing check -> api-1 returns (and gets traffic);
3. SIGKILL sidecar 1: no more reports; its registration's TTL of two intervals runs out
   (embedded: the expiry; Consul: the TTL check goes critical) -> api-1 leaves;
4. start it again -> api-1 returns.

Failures are counted per step: the client retries a 503 (the dead app's sidecar
answering "connect failure") and a refused connection (the dead sidecar) on the other
instance, so none are expected; a request in flight on a connection that the SIGKILL of
a sidecar cuts may fail, so at most one per load thread is allowed there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.sidecar.sidecar_process import SidecarProcess, eventually
from tests.support.components import ConsulAgent
from tests.support.meshd_process import MeshdProcess
from tests.support.processes import REPO_ROOT, ManagedProcess, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

INTERVAL_S = 1.0
SLACK_S = 0.5
"""Beyond two intervals: the report, meshd's debounce (20 ms in tests) and compile, the
push to the client sidecar, and this test's polling of ``/clusters`` (every 20 ms)."""
LOAD_THREADS = 2
HOSTS = ("127.0.0.2", "127.0.0.3")


def both_free(port: int) -> bool:
    for host in HOSTS:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def app_port() -> int:
    for _ in range(50):
        port = free_port(HOSTS[0])
        if both_free(port):
            return port
    raise RuntimeError("no port free on both 127.0.0.2 and 127.0.0.3")


class Backend:
    """``python -m tests.support.apps http`` on ``host:port``: answers 200 on any path."""

    def __init__(self, host: str, port: int, name: str, log_dir: Path) -> None:
        self.host, self.port, self.name, self.log_dir = host, port, name, log_dir
        self.process: ManagedProcess | None = None

    def start(self) -> Backend:
        self.process = ManagedProcess(
            [sys.executable, "-m", "tests.support.apps", "http", "--host", self.host,
             "--port", str(self.port), "--name", self.name],
            name=self.name, cwd=REPO_ROOT, log_dir=self.log_dir,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port)):
                return self
            assert self.process.alive, self.process.describe()
            assert time.monotonic() < deadline, f"{self.name} did not listen"
            time.sleep(0.02)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class Load:
    """Threads sending ``GET /`` to ``api`` through the client sidecar, back to back."""

    url: str
    host: str
    results: list[tuple[float, float, str]] = field(default_factory=list)
    """(start, end, the answering instance or the failure)."""
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    reply = client.get(self.url, headers={"Host": self.host})
                    what = (
                        reply.headers.get("x-instance", "?")
                        if reply.status_code == 200
                        else f"FAILED {reply.status_code} {reply.text[:120]!r}"
                    )
                except httpx.HTTPError as exc:
                    what = f"FAILED {type(exc).__name__}: {exc}"
                with self.lock:
                    self.results.append((started, time.monotonic(), what))

    def between(self, start: float, end: float) -> list[str]:
        with self.lock:
            return [what for s, _, what in self.results if start <= s <= end]


def endpoints(sidecar: SidecarProcess, service_fqdn: str) -> frozenset[str]:
    """The instance ids behind ``service_fqdn`` in the sidecar's ``/clusters``."""
    ids = set()
    for line in sidecar.get("/clusters").text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and service_fqdn in parts[0] and parts[2] == "instance":
            ids.add(parts[3])
    return frozenset(ids)


def timed(
    check: Callable[[], bool], what: str, within: float, describe: Callable[[], str]
) -> float:
    """Seconds until ``check()`` holds, polled every 20 ms; fails after ``within``."""
    started = time.monotonic()
    while not check():
        took = time.monotonic() - started
        assert took < within, f"{what}: not within {within:.1f} s\n{describe()}"
        time.sleep(0.02)
    return time.monotonic() - started


def start_all(sidecars: list[SidecarProcess]) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(sidecars)) as pool:
        for started in [pool.submit(s.start) for s in sidecars]:
            started.result()


@contextlib.contextmanager
def running(*things: SidecarProcess | Backend) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in things:
            if isinstance(thing, SidecarProcess):
                thing.kill()
            else:
                thing.stop()


@pytest.fixture(params=["embedded", "consul"])
def registry(request: pytest.FixtureRequest) -> tuple[str, ConsulAgent | None]:
    if request.param == "consul":
        return "consul", request.getfixturevalue("consul_agent")
    return "embedded", None


@pytest.mark.timeout(120)
def test_a_dead_app_or_sidecar_leaves_and_returns_while_traffic_continues(
    registry: tuple[str, ConsulAgent | None],
    tmp_path: Path,
    meshd_factory: type[MeshdProcess],
) -> None:
    kind, consul = registry
    ns = f"hc{secrets.token_hex(3)}"
    sidecar_registry: list[str] = []
    meshd_args: list[str] = []
    if consul is not None:
        meshd_args = ["--registry", "consul", "--consul-addr", consul.http_addr]
        sidecar_registry = ["--registry", "consul", "--consul-addr", consul.http_addr]
    meshd = meshd_factory(tmp_path / "meshd", extra_args=meshd_args).start()
    with meshd.client() as api:
        tokens = {
            svc: api.post(
                "/v1/tokens", json={"service": svc, "namespace": ns, "uses": "multi"}
            ).json()["token"]
            for svc in ("api", "web")
        }
    port = app_port()
    backends = [Backend(host, port, f"api-{n}", tmp_path) for n, host in enumerate(HOSTS, start=1)]
    check = ["--health-check", "http:/healthz", "--health-interval", f"{INTERVAL_S:g}",
             "--health-timeout", "0.5"]  # fmt: skip
    servers = [
        SidecarProcess(
            meshd.url,
            tokens["api"],
            tmp_path / f"api-{n}",
            ca_file=meshd.ca_file,
            service="api",
            namespace=ns,
            app_port=port,
            extra_args=[
                *("--id", f"api-{n}.{ns}", "--app-address", host),
                *("--inbound-address", "127.0.0.1", *check, *sidecar_registry),
            ],
        )
        for n, host in enumerate(HOSTS, start=1)
    ]
    client = SidecarProcess(
        meshd.url, tokens["web"], tmp_path / "web", ca_file=meshd.ca_file,
        service="web", namespace=ns, app_port=free_port(),
        extra_args=["--id", f"web-1.{ns}", "--inbound-address", "127.0.0.1",
                    *sidecar_registry],
    )  # fmt: skip
    fqdn = f"api.{ns}.svc.cluster.local"
    one, two = f"api-1.{ns}", f"api-2.{ns}"

    def describe() -> str:
        parts = [s.describe() for s in (*servers, client)]
        return "\n".join([*parts, meshd.describe(), f"/clusters: {endpoints(client, fqdn)}"])

    with running(*servers, client, *backends):
        for backend in backends:
            backend.start()
        start_all([*servers, client])
        eventually(
            lambda: endpoints(client, fqdn) == {one, two},
            "both api instances in the client's endpoints",
            timeout=20,
            describe=describe,
        )
        assert servers[0].metrics()["mesh_sidecar_app_healthy"] == "1"
        dump = servers[0].dump()["health"]
        assert (dump["check"], dump["healthy"]) == ("http:/healthz", True)
        assert dump["registry"]["backend"] == ("consul" if consul else "meshd")
        if consul is not None:
            # Registered by the sidecar itself, with a TTL check of two intervals.
            checks = httpx.get(f"{consul.url}/v1/agent/checks", trust_env=False).json()
            ttl_check = checks[f"service:{one}"]
            assert (ttl_check["Status"], ttl_check["ServiceID"]) == ("passing", one)

        load = Load(f"http://127.0.0.1:{client.outbound_port}/", f"api:{port}")
        threads = [threading.Thread(target=load.run, daemon=True) for _ in range(LOAD_THREADS)]
        for thread in threads:
            thread.start()
        report: dict[str, str] = {}
        try:
            eventually(
                lambda: {"api-1", "api-2"} <= set(load.between(0, time.monotonic())),
                "traffic reaching both instances",
                timeout=10,
                describe=describe,
            )

            def step(name: str, act: Callable[[], object], want: frozenset[str]) -> None:
                began = time.monotonic()
                act()
                took = timed(
                    lambda: endpoints(client, fqdn) == want, name, 2 * INTERVAL_S + 4, describe
                )
                time.sleep(SLACK_S)  # requests right after the change count too
                seen = load.between(began, time.monotonic())
                failed = [w for w in seen if w.startswith("FAILED")]
                report[name] = f"{took * 1000:.0f} ms, {len(failed)} failed of {len(seen)}"
                steps[name] = (took, failed)

            steps: dict[str, tuple[float, list[str]]] = {}
            step("app killed -> out", backends[0].kill, frozenset({two}))
            step("app back -> in", backends[0].start, frozenset({one, two}))
            eventually(
                lambda: "api-1" in load.between(time.monotonic() - 0.3, time.monotonic()),
                "traffic reaching api-1 again",
                timeout=5,
                describe=describe,
            )
            step("sidecar killed -> out", servers[0].kill, frozenset({two}))
            step("sidecar back -> in", servers[0].start, frozenset({one, two}))
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(timeout=15)
        total = len(load.results)
        print(f"\n[{kind}] {total} requests; " + "; ".join(f"{k}: {v}" for k, v in report.items()))

        for name in ("app killed -> out", "sidecar killed -> out"):
            took = steps[name][0]
            assert took <= 2 * INTERVAL_S + SLACK_S, f"{name} took {took:.2f} s\n{describe()}"
        assert steps["app back -> in"][0] <= INTERVAL_S + SLACK_S
        assert steps["app killed -> out"][1] == [], steps["app killed -> out"][1]
        assert steps["app back -> in"][1] == []
        # Requests in flight on connections the SIGKILL cut: at most one per thread.
        assert len(steps["sidecar killed -> out"][1]) <= LOAD_THREADS
        assert steps["sidecar back -> in"][1] == []
        assert servers[1].metrics()["mesh_sidecar_app_healthy"] == "1"
        restarted = servers[0].dump()["health"]
        assert restarted["healthy"] is True
