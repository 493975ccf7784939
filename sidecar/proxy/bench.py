"""A quick throughput and CPU measurement of the proxy: ``python -m sidecar.proxy.bench``.

Every role runs in its own process, so the sidecars' CPU is measured alone (from
``/proc/<pid>/stat``):

- ``backend``: a minimal HTTP/1.1 server (asyncio) answering every request with a
  1 KiB body, keep-alive;
- ``sidecar``: a :class:`~sidecar.proxy.ProxyServer` with a hand-built snapshot and a
  workload certificate from a throwaway CA;
- ``load``: a closed-loop load generator (asyncio, keep-alive connections, GET with
  ``Host: bench``) that reports requests/s and latency percentiles; with ``--rate`` an
  open-loop one at a fixed request rate (latency at, say, 1,000 rps).

Scenarios: ``direct`` (load -> backend), ``hop`` (load -> client sidecar's outbound ->
backend, plaintext), ``mesh`` (load -> client sidecar -> mTLS -> server sidecar ->
backend). The benchmark harness in ``bench/`` will compare with nginx and HAProxy; this
script is for before/after checks while optimising (no timing is asserted anywhere).

    python -m sidecar.proxy.bench --duration 5 --connections 16
    python -m sidecar.proxy.bench --scenario mesh --rate 1000 --duration 10
"""

# The roles import what they use inside their functions: the backend and the load
# generator must not pay for (or be slowed by) trio, cryptography and the proxy.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODY = b"x" * 1024
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
)
TD = "cluster.local"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- backend ----------------------------------------------------------------------------------


class _Backend(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            buf = buf[end + 4 :]  # the bench sends no request bodies
            out.append(RESPONSE)
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


def run_backend(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Backend, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


# --- certificates -----------------------------------------------------------------------------


def make_pki(directory: Path) -> None:
    """A throwaway CA and two workload certificates (``client``, ``server``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "root.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name in ("client", "server"):
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/default/sa/{name}")]
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + leaf.public_bytes(serialization.Encoding.PEM)
        path = directory / f"{name}.pem"
        path.write_bytes(pem)
        path.chmod(0o600)


def _identity(directory: Path, name: str) -> Any:

    from meshd.spiffe import parse_spiffe_id
    from sidecar.identity import Identity
    from sidecar.tls_contexts import build_contexts
    from sidecar.x509_reader import cert_facts

    root = (directory / "root.pem").read_text()
    credentials = (directory / f"{name}.pem").read_bytes()
    leaf = cert_facts(credentials[credentials.index(b"-----BEGIN CERT") :].decode())
    contexts = build_contexts(directory / f"state-{name}", credentials, [root])
    sid = leaf.spiffe_id
    assert sid is not None
    return Identity(
        spiffe_id=parse_spiffe_id(str(sid)),
        serial=leaf.serial_hex,
        not_before=leaf.not_before,
        not_after=leaf.not_after,
        issued_at=datetime.datetime.now(datetime.UTC),
        trust_bundle="bench",
        generation=1,
        source="meshd",
        cert_pem="",
        chain_pem="",
        roots=(root,),
        server_context=contexts.server,
        client_context=contexts.client,
        control_context=contexts.control,
    )


# --- sidecar ----------------------------------------------------------------------------------


def _snapshot(name: str, app_port: int, upstream: int, secure: bool) -> Any:
    from meshd.compile import snapshot as s

    host = f"bench.default.svc.{TD}"
    identity = f"spiffe://{TD}/ns/default/sa/server" if secure else None
    cluster = s.Cluster(
        name=f"outbound|80||{host}",
        service=host,
        port=80,
        subset=None,
        protocol="http",
        endpoints=(s.Endpoint("127.0.0.1", upstream, identity=identity),),
        tls_mode="ISTIO_MUTUAL" if secure else "DISABLE",
        expected_identities=(identity,) if identity else (),
    )
    route = s.Route("default", (), s.ForwardAction((s.WeightedCluster(cluster.name, 100),)))
    vhost = s.VirtualHost(f"{host}:80", ("bench", "bench:80", host), (route,))
    return s.ProxySnapshot(
        proxy_id=f"{name}.default",
        version="bench",
        service=f"{name}.default.svc.{TD}",
        namespace="default",
        identity=f"spiffe://{TD}/ns/default/sa/{name}",
        inbound=s.InboundConfig(port=0, app_port=app_port, protocol="http"),
        outbound=s.OutboundConfig(virtual_hosts=(vhost,), tcp_services=(), clusters=(cluster,)),
    )


def run_sidecar(args: argparse.Namespace) -> None:
    import trio

    from registry.latest import Latest
    from sidecar.proxy import ProxyServer, ProxyState, TelemetrySink
    from sidecar.telemetry import Telemetry

    directory = Path(args.pki)
    identity = _identity(directory, args.name)
    state = ProxyState()
    state.apply(_snapshot(args.name, args.app_port, args.upstream, args.secure))
    sink = TelemetrySink(
        Telemetry(args.name, "default", f"spiffe://{TD}/ns/default/sa/{args.name}")
    )
    server = ProxyServer(
        state,
        Latest(identity),
        inbound_host="127.0.0.1",
        inbound_port=args.inbound,
        outbound_port=args.outbound,
        telemetry=sink,
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            print("ready", flush=True)

    trio.run(main)


# --- load -------------------------------------------------------------------------------------


async def _client(
    port: int, host: bytes, deadline: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /bench HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench\r\n\r\n" % host
    clock = time.perf_counter
    try:
        while clock() < deadline:
            t0 = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(clock() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    finally:
        writer.close()


async def _open_loop(
    port: int, host: bytes, rate: float, duration: float, conns: int
) -> tuple[list[float], int]:
    """Requests at a fixed rate over ``conns`` keep-alive connections (a request waits
    for its connection when all are busy: coordinated omission is visible as latency)."""
    queue: asyncio.Queue[float] = asyncio.Queue()
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET /bench HTTP/1.1\r\nHost: %s\r\n\r\n" % host
        while True:
            due = await queue.get()
            if due < 0:
                break
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - due)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
        writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(conns)]
    start = time.perf_counter()
    n = int(rate * duration)
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(due)
    for _ in workers:
        queue.put_nowait(-1.0)
    await asyncio.gather(*workers)
    return latencies, errors


def run_load(args: argparse.Namespace) -> None:
    async def main() -> dict[str, Any]:
        host = args.host.encode()
        if args.rate:
            latencies, errors = await _open_loop(
                args.port, host, args.rate, args.duration, args.connections
            )
            elapsed = args.duration
        else:
            latencies = []
            err: list[int] = []
            deadline = time.perf_counter() + args.duration
            start = time.perf_counter()
            clients = [
                _client(args.port, host, deadline, latencies, err) for _ in range(args.connections)
            ]
            await asyncio.gather(*clients)
            elapsed = time.perf_counter() - start
            errors = len(err)
        latencies.sort()

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

        return {
            "requests": len(latencies),
            "rps": len(latencies) / elapsed,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "errors": errors,
        }

    print(json.dumps(asyncio.run(main())), flush=True)


# --- orchestration ----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _spawn(*argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.proxy.bench", *argv],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise RuntimeError(f"{argv[0]} did not start: {line!r}")
    return proc


def scenario(name: str, args: argparse.Namespace, pki: Path) -> dict[str, Any]:
    backend_port = _free_port()
    procs = [_spawn("backend", "--port", str(backend_port))]
    sidecars: list[subprocess.Popen[str]] = []
    try:
        target = backend_port
        if name in ("hop", "mesh"):
            server_in = _free_port()
            if name == "mesh":
                sidecars.append(
                    _spawn("sidecar", "--pki", str(pki), "--name", "server",
                           "--app-port", str(backend_port), "--upstream", "0",
                           "--inbound", str(server_in), "--outbound", str(_free_port()))
                )  # fmt: skip
            client_out = _free_port()
            upstream = server_in if name == "mesh" else backend_port
            extra = ["--secure"] if name == "mesh" else []
            sidecars.append(
                _spawn("sidecar", "--pki", str(pki), "--name", "client",
                       "--app-port", str(_free_port()), "--upstream", str(upstream),
                       "--inbound", str(_free_port()), "--outbound", str(client_out), *extra)
            )  # fmt: skip
            target = client_out
        procs += sidecars
        # Warm up (connections, pools, TLS sessions), then measure.
        warm = [sys.executable, "-m", "sidecar.proxy.bench", "load", "--port", str(target),
                "--duration", "1", "--connections", str(args.connections)]  # fmt: skip
        subprocess.run(warm, check=True, capture_output=True)
        before = [_cpu_seconds(p.pid) for p in sidecars]
        load = [sys.executable, "-m", "sidecar.proxy.bench", "load", "--port", str(target),
                "--duration", str(args.duration),
                "--connections", str(args.connections)]  # fmt: skip
        if args.rate:
            load += ["--rate", str(args.rate)]
        done = subprocess.run(load, check=True, capture_output=True, text=True)
        result: dict[str, Any] = json.loads(done.stdout)
        cpu = [_cpu_seconds(p.pid) - b for p, b in zip(sidecars, before, strict=True)]
        result["scenario"] = name
        if sidecars and result["requests"]:
            per_request = [c / result["requests"] for c in cpu]
            result["cpu_us_per_request"] = [round(x * 1e6, 1) for x in per_request]
            result["vcpu_per_1000_rps"] = [round(x * 1000, 3) for x in per_request]
            result["rss_mb"] = [round(_rss_mb(p.pid), 1) for p in sidecars]
        return result
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sidecar.proxy.bench")
    sub = parser.add_subparsers(dest="role")
    b = sub.add_parser("backend")
    b.add_argument("--port", type=int, required=True)
    sc = sub.add_parser("sidecar")
    sc.add_argument("--pki", required=True)
    sc.add_argument("--name", required=True)
    sc.add_argument("--app-port", type=int, required=True)
    sc.add_argument("--upstream", type=int, required=True)
    sc.add_argument("--inbound", type=int, required=True)
    sc.add_argument("--outbound", type=int, required=True)
    sc.add_argument("--secure", action="store_true")
    ld = sub.add_parser("load")
    ld.add_argument("--port", type=int, required=True)
    ld.add_argument("--host", default="bench")
    ld.add_argument("--duration", type=float, default=5.0)
    ld.add_argument("--connections", type=int, default=16)
    ld.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--scenario", action="append", choices=("direct", "hop", "mesh"))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=0.0, help="fixed request rate (open loop)")
    args = parser.parse_args(argv)
    if args.role == "backend":
        run_backend(args.port)
    elif args.role == "sidecar":
        run_sidecar(args)
    elif args.role == "load":
        run_load(args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            pki = Path(tmp)
            make_pki(pki)
            for name in args.scenario or ["direct", "hop", "mesh"]:
                print(json.dumps(scenario(name, args, pki)), flush=True)


if __name__ == "__main__":
    main()
