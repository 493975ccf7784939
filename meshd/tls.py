"""meshd's HTTPS: a serving certificate from the mesh CA and verified client
certificates for workloads.

uvicorn creates its listener with one ``SSLContext`` for its whole life. That context
is a dispatcher: its SNI callback (OpenSSL calls it for every ClientHello, with or
without SNI) moves each new connection onto the *current* context, so a renewed
serving certificate or a changed trust bundle applies to the next connection, and
open connections keep theirs.

Client certificates are optional (meshctl authenticates with bearer tokens); when a
sidecar presents one, OpenSSL verifies its chain against the trust bundle and
:class:`PeerCertProtocol` puts the verified leaf into the request scope as ASGI's
``tls`` extension, where :func:`peer_identity` reads its SPIFFE ID.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from meshd.spiffe import SpiffeId, parse_spiffe_id


def _write_private(path: Path, data: bytes) -> None:
    """Atomically, mode 0600 from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def server_context(cert_file: Path, key_file: Path, roots_pem: str | None) -> ssl.SSLContext:
    """TLS 1.2+; client certificates optional and, when sent, verified against ``roots_pem``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if roots_pem:
        context.load_verify_locations(cadata=roots_pem)
        context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["http/1.1"])
    return context


class ServingTls:
    """The dispatcher context handed to uvicorn, and the current real one."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._current: ssl.SSLContext | None = None
        self.dispatcher = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.dispatcher.minimum_version = ssl.TLSVersion.TLSv1_2
        # Needed on the dispatcher too: OpenSSL decides to ask for a client certificate
        # before the callback's context takes over the rest of the handshake.
        self.dispatcher.verify_mode = ssl.CERT_OPTIONAL
        self.dispatcher.sni_callback = self._pick

    def _pick(
        self, sock: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        if self._current is not None:
            sock.context = self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def install(self, cert_chain_pem: str, key_pem: str, roots_pem: str | None) -> None:
        """Serve ``cert_chain_pem`` (leaf first) from the next connection on. The key is
        written 0600 into meshd's data dir: Python's ssl loads keys only from files."""
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert, key = self._dir / "meshd.pem", self._dir / "meshd-key.pem"
        _write_private(key, key_pem.encode())
        _write_private(cert, cert_chain_pem.encode())
        self._current = server_context(cert, key, roots_pem)
        if not self._dispatcher_has_cert:
            # The dispatcher must hold a certificate of its own before OpenSSL gets to
            # the callback; any valid one will do, it is never served.
            self.dispatcher.load_cert_chain(cert, key)
            if roots_pem:
                self.dispatcher.load_verify_locations(cadata=roots_pem)
            self._dispatcher_has_cert = True

    _dispatcher_has_cert = False


class PeerCertProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the verified client certificate in
    ``scope["extensions"]["tls"]["client_cert_chain"]`` (the ASGI TLS extension)."""

    _peer_pem: str | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._peer_pem = ssl.DER_cert_to_PEM_cert(der) if der else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._peer_pem is not None:
            self.scope["extensions"] = {"tls": {"client_cert_chain": [self._peer_pem]}}


_IDENTITIES: OrderedDict[str, SpiffeId | None] = OrderedDict()


def peer_identity(scope: Any, trust_domain: str) -> SpiffeId | None:
    """The SPIFFE ID of the verified client certificate, if the request came with one
    from this trust domain. Parsed once per certificate (cached)."""
    tls = scope.get("extensions", {}).get("tls")
    if not tls or not tls.get("client_cert_chain"):
        return None
    pem = tls["client_cert_chain"][0]
    if pem in _IDENTITIES:
        _IDENTITIES.move_to_end(pem)
        found = _IDENTITIES[pem]
    else:
        found = _spiffe_of(pem)
        _IDENTITIES[pem] = found
        if len(_IDENTITIES) > 10_000:
            _IDENTITIES.popitem(last=False)
    return found if found is not None and found.trust_domain == trust_domain else None


def _spiffe_of(pem: str) -> SpiffeId | None:
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return None
    try:
        return parse_spiffe_id(uris[0])
    except ValueError:
        return None
