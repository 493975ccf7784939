"""The rotation acceptance test (issue 3): a TLS server and a TLS client, both built on
:class:`sidecar.identity.IdentityManager` and getting their certificates from a real
``meshd serve``, exchange small requests continuously — on new connections and on
reused ones — through (a) a forced renewal of both and (b) a root rotation driven
through meshd: roots [old] -> [old, new] -> signing switches -> both renew -> [new].
Not one handshake and not one request may fail.

Each workload also runs what the sidecar's agent will run (``MiniAgent``): it
registers its instance and long-polls its snapshot over mTLS with its own certificate
(``manager.control_plane_context()``), and hands every snapshot's trust roots to
``manager.update_roots`` *before* ACKing it, so meshd switches signing only once both
trust the new root.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography import x509

from sidecar.config_store import decode_snapshot
from sidecar.control_client import Registration
from sidecar.identity import Identity, IdentityManager, check_peer
from tests.support.meshd_process import MeshdProcess

CERT_TTL = "90s"  # renewals every ~45 s on their own, on top of the forced ones
CONNECTIONS = 4  # concurrent short-lived connections (a few requests each)
LONG_LIVED = 2  # connections kept open from start to end
REQUESTS_PER_CONNECTION = 5
PAUSE_S = 0.005


@dataclass
class Counts:
    handshakes_ok: int = 0
    handshakes_failed: int = 0
    requests_ok: int = 0
    requests_failed: int = 0
    server_handshakes_failed: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, what: str, exc: BaseException) -> None:
        cause = exc.__cause__ or exc.__context__
        self.errors.append(f"{time.strftime('%H:%M:%S')} {what}: {exc!r} (cause {cause!r})")


# --- what the agent will do: register, poll, update roots, ACK --------------------------------


class MiniAgent:
    def __init__(
        self, meshd: MeshdProcess, manager: IdentityManager, port: int, service: str
    ) -> None:
        self.meshd = meshd
        self.manager = manager
        self.registration = Registration(
            service=service,
            namespace=manager.namespace,
            address="127.0.0.1",
            port=port,
            app_port=port,
            protocol="tcp",
            service_account=manager.service_account,
        )
        self.version = ""
        self.bundles: list[str] = []

    async def run(self) -> None:
        registered = False
        while True:
            # A new client for each request: the context changes with every identity.
            async with httpx.AsyncClient(
                base_url=self.meshd.url,
                verify=self.manager.control_plane_context(),
                trust_env=False,
                timeout=httpx.Timeout(10.0, read=15.0),
            ) as http:
                try:
                    if not registered:
                        proxy = self.manager.proxy_id
                        reply = await http.put(
                            f"/v1/instances/{proxy}", json=self.registration.to_json()
                        )
                        assert reply.status_code == 200, reply.text
                        registered = True
                    reply = await http.get(
                        f"/v1/xds/{self.manager.proxy_id}",
                        params={"version": self.version, "wait": "1"},
                    )
                except httpx.TransportError:
                    await trio.sleep(0.1)
                    continue
            if reply.status_code == 404:
                registered = False
                continue
            if reply.status_code == 304:
                continue
            assert reply.status_code == 200, reply.text
            version = reply.headers["X-Mesh-Version"]
            snapshot = decode_snapshot(
                reply.content, self.manager.proxy_id, expected_version=version
            )
            await self.manager.update_roots(snapshot.trust_roots, snapshot.trust_bundle)
            if not self.bundles or self.bundles[-1] != snapshot.trust_bundle:
                self.bundles.append(snapshot.trust_bundle)
            self.version = version  # the next poll ACKs it


# --- the traffic ------------------------------------------------------------------------------


async def serve(
    manager: IdentityManager,
    expected_client: str,
    counts: Counts,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])

    async def handle(tcp: trio.SocketStream) -> None:
        stream = manager.server_stream(tcp)  # the CURRENT context, per connection
        try:
            try:
                await stream.do_handshake()
                check_peer(stream, [expected_client])
            except Exception as exc:
                counts.server_handshakes_failed += 1
                counts.fail("server handshake", exc)
                return
            buffer = b""
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    await stream.send_all(b"pong " + line + b"\n")
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        task_status.started(port)


async def open_connection(
    manager: IdentityManager, port: int, expected_server: str, counts: Counts
) -> trio.SSLStream[trio.abc.Stream] | None:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = manager.client_stream(tcp)  # the CURRENT context, per connection
    try:
        await stream.do_handshake()
        check_peer(stream, [expected_server])
    except Exception as exc:
        counts.handshakes_failed += 1
        counts.fail("client handshake", exc)
        await trio.aclose_forcefully(stream)
        return None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    counts.handshakes_ok += 1
    return stream


async def request(stream: trio.abc.Stream, n: int, counts: Counts) -> bool:
    try:
        await stream.send_all(f"{n}\n".encode())
        reply = b""
        while not reply.endswith(b"\n"):
            data = await stream.receive_some(4096)
            if not data:
                raise trio.BrokenResourceError("the server closed the connection")
            reply += data
        if reply != f"pong {n}\n".encode():
            raise AssertionError(f"unexpected reply {reply!r}")
    except Exception as exc:
        counts.requests_failed += 1
        counts.fail(f"request {n}", exc)
        return False
    counts.requests_ok += 1
    return True


async def short_lived(manager: IdentityManager, port: int, expected: str, counts: Counts) -> None:
    n = 0
    while True:
        stream = await open_connection(manager, port, expected, counts)
        if stream is None:
            await trio.sleep(0.05)
            continue
        try:
            for _ in range(REQUESTS_PER_CONNECTION):
                n += 1
                if not await request(stream, n, counts):
                    break
                await trio.sleep(PAUSE_S)
        finally:
            await trio.aclose_forcefully(stream)


async def long_lived(manager: IdentityManager, port: int, expected: str, counts: Counts) -> None:
    stream = await open_connection(manager, port, expected, counts)
    assert stream is not None
    n = 0
    try:
        while True:
            n += 1
            await request(stream, n, counts)
            await trio.sleep(PAUSE_S * 4)
    finally:
        await trio.aclose_forcefully(stream)


# --- driving meshd --------------------------------------------------------------------------


@contextlib.contextmanager
def admin(meshd: MeshdProcess) -> Iterator[httpx.Client]:
    # meshd.verify() reads the bundle file anew: it changes during the rotation.
    with httpx.Client(
        base_url=meshd.url,
        verify=meshd.verify(),
        headers={"Authorization": f"Bearer {meshd.token}"},
        timeout=10.0,
    ) as client:
        yield client


async def call_admin(meshd: MeshdProcess, method: str, path: str, **kw: Any) -> Any:
    def call() -> Any:
        with admin(meshd) as client:
            reply = client.request(method, path, **kw)
            assert reply.status_code < 300, f"{method} {path}: {reply.status_code} {reply.text}"
            return reply.json() if reply.content else None

    return await trio.to_thread.run_sync(call)


async def join_token(meshd: MeshdProcess, service: str, namespace: str) -> str:
    body = {"service": service, "namespace": namespace, "uses": "multi", "ttl": "1h"}
    created = await call_admin(meshd, "POST", "/v1/tokens", json=body)
    return str(created["token"])


async def eventually(what: str, check: Any, within_s: float = 60.0) -> Any:
    with trio.move_on_after(within_s):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(0.2)
    raise AssertionError(f"timed out after {within_s:.0f} s waiting for {what}")


def issued_by(identity: Identity, root_pem: str) -> bool:
    """Whether ``identity``'s chain ends at ``root_pem``."""
    root = x509.load_pem_x509_certificate(root_pem.encode())
    chain = (
        x509.load_pem_x509_certificates(identity.chain_pem.encode())
        if identity.chain_pem.strip()
        else []
    )
    top = chain[-1] if chain else x509.load_pem_x509_certificate(identity.cert_pem.encode())
    try:
        top.verify_directly_issued_by(root)
    except Exception:
        return False
    return True


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_no_handshake_or_request_fails_through_renewal_and_root_rotation(
    tmp_path: Path, meshd_factory: type[MeshdProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.identity")
    meshd = meshd_factory(tmp_path / "meshd", extra_args=["--cert-ttl", CERT_TTL]).start()
    ns = "rot-" + secrets.token_hex(3)
    counts = Counts()
    report: dict[str, Any] = {}

    def manager(service: str, token: str) -> IdentityManager:
        return IdentityManager(
            meshd_url=meshd.url,
            join_token=token,
            proxy_id=f"{service}-1.{ns}",
            service=service,
            namespace=ns,
            state_dir=tmp_path / service,
            ca_file=meshd.ca_file,
        )

    async def main() -> None:
        server = manager("rot-server", await join_token(meshd, "rot-server", ns))
        client = manager("rot-client", await join_token(meshd, "rot-client", ns))
        async with trio.open_nursery() as nursery:
            server_id: Identity = await nursery.start(server.run)
            client_id: Identity = await nursery.start(client.run)
            (old_root,) = server_id.roots
            port = await nursery.start(serve, server, str(client_id.spiffe_id), counts)
            agents = [
                MiniAgent(meshd, server, port, "rot-server"),
                MiniAgent(meshd, client, port, "rot-client"),
            ]
            for agent in agents:
                nursery.start_soon(agent.run)
            expected = str(server_id.spiffe_id)
            for _ in range(CONNECTIONS):
                nursery.start_soon(short_lived, client, port, expected, counts)
            for _ in range(LONG_LIVED):
                nursery.start_soon(long_lived, client, port, expected, counts)

            async def flowing(more: int) -> None:
                target = counts.requests_ok + more
                await eventually(
                    f"{more} more requests", lambda: _true(counts.requests_ok >= target)
                )

            await flowing(200)
            # Both sidecars are in meshd's view (their ACKs gate the rotation).
            await eventually("both agents synced", lambda: _true(all(a.version for a in agents)))

            # (a) a forced renewal of both
            before = (server.current.value, client.current.value)
            await server.renew_now()
            await client.renew_now()
            assert server.current.value is not before[0]
            assert client.current.value is not before[1]
            await flowing(200)

            # (b) a root rotation through meshd
            await call_admin(meshd, "POST", "/v1/ca/rotate")
            both = await eventually(
                "both sidecars trust [old, new]",
                lambda: _true(len(server.roots) == 2 and len(client.roots) == 2),
            )
            assert both
            (new_root,) = [r for r in server.roots if r != old_root]
            report["rotation"] = await eventually(
                "signing to switch to the new root", lambda: _phase(meshd, "switched")
            )
            await flowing(100)
            await server.renew_now()
            await client.renew_now()
            for m in (server, client):
                identity = m.current.value
                assert identity is not None
                assert issued_by(identity, new_root), "renewed under the old root after the switch"
            await flowing(200)
            await eventually(
                "the old root to leave the bundle", lambda: _phase(meshd, None), within_s=120
            )
            await eventually(
                "both sidecars trust only the new root",
                lambda: _true(server.roots == (new_root,) and client.roots == (new_root,)),
            )
            # New connections after the old root is gone, reused ones from the start.
            await flowing(200)
            report["bundles"] = [a.bundles for a in agents]
            report["renewals"] = (server.renewals_total, client.renewals_total)
            nursery.cancel_scope.cancel()

    trio.run(main)
    summary = (
        f"handshakes ok {counts.handshakes_ok}, failed {counts.handshakes_failed} "
        f"(server side failed {counts.server_handshakes_failed}); requests ok "
        f"{counts.requests_ok}, failed {counts.requests_failed}; renewals "
        f"{report.get('renewals')}; bundles seen {report.get('bundles')}"
    )
    print(summary)  # the counts are what this test reports
    assert counts.errors == [], summary + "\n" + "\n".join(counts.errors[:20])
    assert counts.handshakes_failed == 0
    assert counts.server_handshakes_failed == 0
    assert counts.requests_failed == 0
    assert counts.handshakes_ok >= 100
    assert counts.requests_ok >= 900
    # Every agent saw three bundles: [old], [old, new], [new].
    for bundles in report["bundles"]:
        assert len(bundles) == 3, bundles
    assert min(report["renewals"]) >= 2


async def _true(value: bool) -> bool:
    return value


async def _phase(meshd: MeshdProcess, phase: str | None) -> Any:
    status = await call_admin(meshd, "GET", "/v1/ca/rotation")
    rotation = status.get("rotation")
    current = rotation.get("phase") if rotation else None
    return status if current == phase else None
