"""The identity's TLS contexts over real loopback sockets: mTLS between two workloads,
refusals (no certificate, another CA, the wrong peer), an open connection surviving a
renewal, roots [old] -> [old, new] during a rotation, the control-plane context's
hostname check, and renewal over mTLS against a small HTTPS CA endpoint."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509

from sidecar.http_client import HttpRequest, build_request, send
from sidecar.identity import (
    Identity,
    IdentityManager,
    PeerIdentityMismatch,
    SigningUnavailable,
    check_peer,
)
from sidecar.tls_contexts import client_context, peer_spiffe_id
from tests.sidecar.test_identity_support import (
    SPIFFE,
    TOKEN,
    EchoServer,
    FakeMeshdCa,
    TestCa,
    connect,
    exchange,
    is_refused,
    make_manager,
    pem,
)

RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"


def pair(tmp_path: Path, ca: TestCa) -> tuple[IdentityManager, IdentityManager]:
    """Two workloads of one mesh: ``reviews`` (serves) and ``ratings`` (calls)."""
    server = make_manager(tmp_path / "reviews", FakeMeshdCa(ca), trust_domain="cluster.local")
    client = make_manager(
        tmp_path / "ratings",
        FakeMeshdCa(ca, spiffe=RATINGS),
        service="ratings",
        trust_domain="cluster.local",
    )
    return server, client


def serial_of(stream: trio.SSLStream[Any]) -> str:
    der = stream.getpeercert(binary_form=True)
    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def bare_client(roots: list[str], credentials: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata="".join(roots))
    if credentials is not None:
        ctx.load_cert_chain(str(credentials))
    return ctx


def test_mtls_handshake_and_peer_identities(tmp_path: Path) -> None:
    ca = TestCa(intermediate=True)
    server, client = pair(tmp_path, ca)
    seen: dict[str, Any] = {}

    async def main() -> None:
        await server.obtain()
        await client.obtain()
        echo = EchoServer(server.server_stream)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(echo.serve)
            identity = client.current.value
            assert identity is not None
            stream = await connect(port, identity.client_context)
            seen["reply"] = await exchange(stream, "hello")
            seen["peer"] = peer_spiffe_id(stream)
            seen["checked"] = check_peer(stream, [SPIFFE])
            seen["version"] = stream.version()
            seen["alpn"] = stream.selected_alpn_protocol()
            with pytest.raises(PeerIdentityMismatch, match=r"expected spiffe://cluster\.local/ns"):
                check_peer(stream, [RATINGS])
            await stream.aclose()
            nursery.cancel_scope.cancel()
        seen["server_saw"] = echo.peers

    trio.run(main)
    assert seen["reply"] == f"{RATINGS}:hello"
    assert str(seen["peer"]) == SPIFFE
    assert str(seen["checked"]) == SPIFFE
    assert seen["version"] == "TLSv1.3"
    assert seen["alpn"] == "http/1.1"
    assert seen["server_saw"] == [RATINGS]


def test_a_client_without_a_certificate_is_refused(tmp_path: Path) -> None:
    ca = TestCa()
    server = make_manager(tmp_path, FakeMeshdCa(ca))

    async def main() -> EchoServer:
        await server.obtain()
        echo = EchoServer(server.server_stream)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(echo.serve)
            stream = await connect(port, bare_client([ca.root_pem], None))
            assert await is_refused(stream)
            nursery.cancel_scope.cancel()
        return echo

    echo = trio.run(main)
    assert len(echo.handshake_failures) == 1
    assert "certificate" in echo.handshake_failures[0].lower()
    assert echo.peers == []


def test_peers_from_another_ca_are_refused_both_ways(tmp_path: Path) -> None:
    ca, stranger = TestCa("mesh"), TestCa("stranger")
    server = make_manager(tmp_path / "server", FakeMeshdCa(ca))
    impostor = make_manager(tmp_path / "impostor", FakeMeshdCa(stranger))

    async def main() -> tuple[EchoServer, EchoServer]:
        await server.obtain()
        await impostor.obtain()
        ours, theirs = EchoServer(server.server_stream), EchoServer(impostor.server_stream)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(ours.serve)
            # A client whose certificate comes from another CA (it trusts ours).
            creds = stranger.credentials(tmp_path / "x", SPIFFE)
            stream = await connect(port, bare_client([ca.root_pem], creds))
            assert await is_refused(stream)
            # A server whose certificate comes from another CA: our client refuses it.
            other_port = await nursery.start(theirs.serve)
            identity = server.current.value
            assert identity is not None
            with pytest.raises(trio.BrokenResourceError) as caught:
                await connect(other_port, identity.client_context)
            assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
            nursery.cancel_scope.cancel()
        return ours, theirs

    ours, theirs = trio.run(main)
    assert len(ours.handshake_failures) == 1
    assert ours.peers == []
    assert theirs.peers == []


def test_an_open_connection_survives_renewal_and_new_ones_use_the_new_certificate(
    tmp_path: Path,
) -> None:
    ca = TestCa(intermediate=True)
    server, client = pair(tmp_path, ca)
    log: list[str] = []

    async def main() -> EchoServer:
        first_server = await server.obtain()
        first_client = await client.obtain()
        echo = EchoServer(server.server_stream)  # takes the CURRENT context per connection
        async with trio.open_nursery() as nursery:
            port = await nursery.start(echo.serve)
            old = await connect(port, first_client.client_context)
            log.append(await exchange(old, "1"))
            assert serial_of(old) == first_server.serial

            second_server = await server.renew_now()
            second_client = await client.renew_now()
            assert second_server.serial != first_server.serial

            # The open connection goes on, on the old contexts and certificates.
            for i in range(2, 5):
                log.append(await exchange(old, str(i)))
            assert serial_of(old) == first_server.serial
            # A new connection gets the new certificates on both sides.
            new = await connect(port, second_client.client_context)
            log.append(await exchange(new, "new"))
            assert serial_of(new) == second_server.serial
            log.append(await exchange(old, "5"))
            await old.aclose()
            await new.aclose()
            nursery.cancel_scope.cancel()
        return echo

    echo = trio.run(main)
    assert log == [f"{RATINGS}:{m}" for m in ("1", "2", "3", "4", "new", "5")]
    assert echo.handshake_failures == []


def test_roots_old_and_new_accept_peers_of_both_roots(tmp_path: Path) -> None:
    old, new = TestCa("old root"), TestCa("new root", intermediate=True)
    server, client = pair(tmp_path, old)
    rotated = make_manager(
        tmp_path / "rotated",
        FakeMeshdCa(new, bundle=[old, new], spiffe=RATINGS),
        service="ratings",
        trust_domain="cluster.local",
    )

    async def main() -> EchoServer:
        await server.obtain()
        old_peer = await client.obtain()
        echo = EchoServer(server.server_stream)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(echo.serve)
            kept = await connect(port, old_peer.client_context)
            assert await exchange(kept, "a") == f"{RATINGS}:a"

            # Before the server trusts the new root, a new-root peer is refused.
            new_peer: Identity = await rotated.obtain()
            assert new_peer.roots == (old.root_pem, new.root_pem)
            refused = await connect(port, new_peer.client_context)
            assert await is_refused(refused)
            assert len(echo.handshake_failures) == 1

            # The snapshot brings [old, new]: both kinds of peers are accepted.
            assert await server.update_roots([old.root_pem, new.root_pem])
            fresh = await connect(port, new_peer.client_context)
            assert await exchange(fresh, "c") == f"{RATINGS}:c"
            again = await connect(port, old_peer.client_context)
            assert await exchange(again, "d") == f"{RATINGS}:d"
            assert await exchange(kept, "e") == f"{RATINGS}:e"  # never dropped
            for s in (kept, fresh, again):
                await s.aclose()
            nursery.cancel_scope.cancel()
        return echo

    echo = trio.run(main)
    assert len(echo.handshake_failures) == 1


def test_the_client_context_does_not_check_hostnames_but_does_verify(tmp_path: Path) -> None:
    ca = TestCa()
    creds = ca.credentials(tmp_path, SPIFFE)
    ctx = client_context(creds, [ca.root_pem])
    assert ctx.check_hostname is False
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


# --- meshd over HTTPS --------------------------------------------------------------------


class HttpsCa:
    """The fake CA endpoint served over real HTTPS by a certificate for ``ip`` from the
    mesh CA, asking for (not requiring) a client certificate, as meshd does."""

    def __init__(self, fake: FakeMeshdCa, ca: TestCa, directory: Path, ip: str = "127.0.0.1"):
        self.fake = fake
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(ca.credentials(directory, None, ips=(ip,), name="s.pem")))
        self.context.load_verify_locations(cadata="".join(c.root_pem for c in fake.roots()))
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self.peers: list[str | None] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.context, server_side=True, https_compatible=True)
        try:
            await stream.do_handshake()
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, target, _ = lines[0].split(" ")
            headers = [(k, v) for k, _, v in (line.partition(": ") for line in lines[1:])]
            length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
            while len(body) < length:
                body += await stream.receive_some(65536)
            peer = peer_spiffe_id(stream)
            self.peers.append(str(peer) if peer else None)
            request = HttpRequest(
                method, f"https://127.0.0.1{target}", headers=tuple(headers), body=body
            )
            response = self.fake.answer(request)
            out = response.body
            await stream.send_all(
                f"HTTP/1.1 {response.status} X\r\ncontent-type: application/json\r\n"
                f"content-length: {len(out)}\r\nconnection: close\r\n\r\n".encode()
                + out
            )
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()


def test_first_certificate_and_renewal_over_https_and_mtls(tmp_path: Path) -> None:
    ca = TestCa(intermediate=True)
    fake = FakeMeshdCa(ca)
    https = HttpsCa(fake, ca, tmp_path / "meshd")
    ca_file = tmp_path / "mesh-ca.pem"
    ca_file.write_text(ca.root_pem)
    result: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(https.serve)
            manager = make_manager(
                tmp_path / "state",
                None,
                meshd_url=f"https://127.0.0.1:{port}",
                ca_file=ca_file,
            )
            first = await manager.obtain()
            second = await manager.renew_now()
            result["serials"] = (first.serial, second.serial)
            # The control-plane context now presents our certificate to meshd.
            assert manager.control_plane_context() is second.control_context
            response = await send(
                build_request(
                    "GET",
                    f"https://127.0.0.1:{port}/v1/ca/roots",
                    tls=manager.control_plane_context(),
                )
            )
            assert response.status == 200
            nursery.cancel_scope.cancel()

    trio.run(main)
    first_serial, second_serial = result["serials"]
    assert first_serial != second_serial
    assert fake.authorizations == [f"Bearer {TOKEN}", None]
    # roots (no certificate yet), sign with the token, renewal over mTLS, the GET above
    assert https.peers == [None, None, SPIFFE, SPIFFE]


@pytest.mark.parametrize(
    ("issuer", "ip", "reason"),
    [
        ("other", "127.0.0.1", "unable to get local issuer certificate"),
        ("mesh", "127.0.0.2", "IP address mismatch"),
    ],
)
def test_meshd_is_verified_by_its_ca_and_its_address(
    tmp_path: Path, issuer: str, ip: str, reason: str
) -> None:
    ca = TestCa("mesh")
    https = HttpsCa(FakeMeshdCa(ca), ca if issuer == "mesh" else TestCa(issuer), tmp_path, ip)
    ca_file = tmp_path / "mesh-ca.pem"
    ca_file.write_text(ca.root_pem)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(https.serve)
            manager = make_manager(
                tmp_path / "state",
                None,
                meshd_url=f"https://127.0.0.1:{port}",
                ca_file=ca_file,
                trust_domain="cluster.local",
            )
            with pytest.raises(SigningUnavailable, match=reason) as caught:
                await manager.renew_now()
            assert "not signed by a CA this sidecar trusts" in str(caught.value)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_short_lived_leaf_metadata(tmp_path: Path) -> None:
    ca = TestCa()
    fake = FakeMeshdCa(ca, lifetime=datetime.timedelta(minutes=10))
    manager = make_manager(tmp_path, fake)
    identity = trio.run(manager.obtain)
    assert 599 < identity.lifetime_s <= 600  # from receipt to notAfter
    leaf = x509.load_pem_x509_certificate(identity.cert_pem.encode())
    assert pem(leaf) == identity.cert_pem


def test_alpn_is_configurable_for_http2(tmp_path: Path) -> None:
    ca = TestCa()
    alpn = ("h2", "http/1.1")
    server = make_manager(tmp_path / "s", FakeMeshdCa(ca), trust_domain="cluster.local", alpn=alpn)
    client = make_manager(
        tmp_path / "c",
        FakeMeshdCa(ca, spiffe=RATINGS),
        service="ratings",
        trust_domain="cluster.local",
        alpn=alpn,
    )

    async def main() -> str | None:
        await server.obtain()
        identity = await client.obtain()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(EchoServer(server.server_stream).serve)
            stream = await connect(port, identity.client_context)
            chosen: str | None = stream.selected_alpn_protocol()
            await stream.aclose()
            nursery.cancel_scope.cancel()
        return chosen

    assert trio.run(main) == "h2"
