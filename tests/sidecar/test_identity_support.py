"""Helpers of the identity tests (no tests here): a test CA that signs SPIFFE leaves
from CSRs, a fake meshd CA endpoint (the ``send`` of an IdentityManager), and small Trio TLS
echo servers and clients. Named ``test_identity_*`` only to sit with the identity tests."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.control_client import Backoff
from sidecar.errors import ConnectError
from sidecar.http_client import HttpRequest, HttpResponse
from sidecar.identity import IdentityManager

TRUST_DOMAIN = "cluster.local"
SERVICE = "reviews"
NAMESPACE = "default"
SPIFFE = f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{SERVICE}"
PROXY = "reviews-0a1b2c3d.default"
TOKEN = "mjt_test-join-token"
SKEW = datetime.timedelta(minutes=1)


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class TestCa:
    """A root, and optionally an intermediate that signs leaves (as meshd's embedded CA
    does). Leaves carry serverAuth and clientAuth: one certificate serves both sides."""

    __test__ = False

    def __init__(self, name: str = "test mesh root", *, intermediate: bool = False) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(self.root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.root_key.public_key()),
                critical=False,
            )
            .sign(self.root_key, hashes.SHA256())
        )
        self.signer_key, self.signer = self.root_key, self.root
        self.chain: list[x509.Certificate] = []
        if intermediate:
            key = ec.generate_private_key(ec.SECP256R1())
            inter = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} int")]))
                .issuer_name(root_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - SKEW)
                .not_valid_after(now + datetime.timedelta(days=10))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_usage(ca=True), critical=True)
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()),
                    critical=False,
                )
                .sign(self.root_key, hashes.SHA256())
            )
            self.signer_key, self.signer, self.chain = key, inter, [inter]

    @property
    def root_pem(self) -> str:
        return pem(self.root)

    @property
    def chain_pem(self) -> str:
        return "".join(pem(c) for c in self.chain)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        spiffe: str | None = SPIFFE,
        *,
        lifetime: datetime.timedelta = datetime.timedelta(hours=1),
        not_before: datetime.datetime | None = None,
        ips: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
    ) -> x509.Certificate:
        start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
        names: list[x509.GeneralName] = []
        if spiffe:
            names.append(x509.UniformResourceIdentifier(spiffe))
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        names += [x509.DNSName(name) for name in dns]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.signer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.signer_key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
        return builder.sign(self.signer_key, hashes.SHA256())

    def credentials(
        self,
        directory: Path,
        spiffe: str | None = SPIFFE,
        *,
        ips: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
        name: str = "peer.pem",
    ) -> Path:
        """A new key and leaf (+ chain) in one PEM file for ``load_cert_chain``."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self.issue(key.public_key(), spiffe, ips=ips, dns=dns)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_text(key_pem(key) + pem(leaf) + self.chain_pem)
        path.chmod(0o600)
        return path


# --- a fake meshd CA (an IdentityManager's send) ------------------------------------------


Reply = HttpResponse | Exception


@dataclass
class FakeMeshdCa:
    """``POST /v1/ca/sign`` and ``GET /v1/ca/roots`` as meshd answers them. ``script``
    answers sign requests first (errors, odd answers), then it signs. Signing with
    ``signing`` (a TestCa); the bundle is ``bundle`` (default: just ``signing``).
    Certificates are valid for ``lifetime`` from now, and from ``backdate`` ago (as
    meshd backdates notBefore by a minute for clock skew)."""

    signing: TestCa
    bundle: list[TestCa] = field(default_factory=list)
    lifetime: datetime.timedelta = datetime.timedelta(hours=1)
    backdate: datetime.timedelta = datetime.timedelta(0)
    spiffe: str = SPIFFE
    script: list[Reply] = field(default_factory=list)
    roots_script: list[Reply] = field(default_factory=list)
    tamper: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    down: bool = False
    clock: Callable[[], float] = time.time
    signs: list[dict[str, Any]] = field(default_factory=list)
    sign_times: list[float] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    roots_requests: int = 0

    def roots(self) -> list[TestCa]:
        return self.bundle or [self.signing]

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.answer(request)

    def answer(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/v1/ca/roots":
            if self.down:
                raise refused(request)
            self.roots_requests += 1
            if self.roots_script:
                return _reply(self.roots_script.pop(0))
            return HttpResponse.of(
                200,
                json_body={
                    "trustDomain": TRUST_DOMAIN,
                    "digest": "x",
                    "roots": [
                        {"id": str(i), "pem": ca.root_pem, "notAfter": "", "signing": i == 0}
                        for i, ca in enumerate(self.roots())
                    ],
                },
            )
        assert request.path == "/v1/ca/sign", request.path
        assert request.method == "POST"
        self.authorizations.append(request.header("authorization"))
        if self.down:
            raise refused(request)
        body = request.json()
        self.signs.append(body)
        self.sign_times.append(time.time())
        if self.script:
            return _reply(self.script.pop(0))
        return HttpResponse.of(200, json_body=self.sign(body["csr"]))

    def sign(self, csr_pem: str) -> dict[str, Any]:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        now = datetime.datetime.fromtimestamp(math.floor(self.clock()), datetime.UTC)
        leaf = self.signing.issue(
            public_key,
            self.spiffe,
            lifetime=self.lifetime + self.backdate,
            not_before=now - self.backdate,
        )
        answer = {
            "certificate": pem(leaf),
            "chain": self.signing.chain_pem,
            "roots": [ca.root_pem for ca in self.roots()],
            "trustBundle": "digest",
            "trustDomain": TRUST_DOMAIN,
            "spiffeId": self.spiffe,
            "notBefore": leaf.not_valid_before_utc.isoformat(),
            "notAfter": leaf.not_valid_after_utc.isoformat(),
            "serial": f"{leaf.serial_number:x}",
        }
        return self.tamper(answer) if self.tamper else answer


def _reply(reply: Reply) -> HttpResponse:
    if isinstance(reply, Exception):
        raise reply
    return reply


def refused(request: HttpRequest | None = None) -> ConnectError:
    """What the client raises when meshd's port is closed."""
    method, url = (request.method, request.url) if request else ("POST", "https://meshd.test")
    return ConnectError(method, url, "[Errno 111] Connection refused")


def problem(status: int, detail: str, **headers: str) -> HttpResponse:
    return HttpResponse.of(
        status,
        json_body={"status": status, "detail": detail},
        headers={"content-type": "application/problem+json", **headers},
    )


def fast_backoff() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)


def make_manager(
    state_dir: Path,
    fake: FakeMeshdCa | None = None,
    *,
    meshd_url: str = "https://meshd.test:15012",
    service: str = SERVICE,
    **kwargs: Any,
) -> IdentityManager:
    options: dict[str, Any] = {"backoff": fast_backoff}
    if fake is not None:
        options["send"] = fake
    options.update(kwargs)
    return IdentityManager(
        meshd_url=meshd_url,
        join_token=TOKEN,
        proxy_id=PROXY,
        service=service,
        namespace=NAMESPACE,
        state_dir=state_dir,
        **options,
    )


def messages(caplog_records: list[logging.LogRecord], needle: str) -> list[str]:
    return [r.getMessage() for r in caplog_records if needle in r.getMessage()]


# --- Trio TLS echo ----------------------------------------------------------------------


Wrap = Callable[[trio.SocketStream], trio.SSLStream[Any]]


@dataclass
class EchoServer:
    """Accepts TCP, wraps each connection with ``wrap`` (called per connection: that is
    where the current context is taken), echoes lines prefixed with the peer's SPIFFE
    ID. Counts handshake failures."""

    wrap: Wrap
    port: int = 0
    handshake_failures: list[str] = field(default_factory=list)
    peers: list[str | None] = field(default_factory=list)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        from sidecar.tls_contexts import peer_spiffe_id

        stream = self.wrap(tcp)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            self.handshake_failures.append(repr(exc.__cause__ or exc))
            await tcp.aclose()
            return
        peer = peer_spiffe_id(stream)
        self.peers.append(str(peer) if peer else None)
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    break
                await stream.send_all(f"{peer}:".encode() + data)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()


async def connect(port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=None, https_compatible=True)
    try:
        await stream.do_handshake()
    except BaseException:
        await tcp.aclose()
        raise
    return stream


async def exchange(stream: trio.abc.Stream, text: str) -> str:
    await stream.send_all(text.encode())
    data = await stream.receive_some(4096)
    return data.decode()


async def is_refused(stream: trio.SSLStream[Any]) -> bool:
    """After a handshake the server refused (TLS 1.3: the client learns it on reading):
    the exchange fails or meets EOF. Closes the stream either way."""
    try:
        reply = await exchange(stream, "hello")
    except trio.BrokenResourceError:
        reply = ""
    finally:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
    return reply == ""
