"""TLS contexts of a workload identity, and reading a peer's SPIFFE ID.

Stdlib only (``ssl`` and :mod:`sidecar.x509_reader`); no Trio, no I/O beyond the
private credentials file. :mod:`sidecar.identity` builds a :class:`TlsContexts` for
every certificate and every change of the trust roots; see its docstring for how
listeners and pools use them.

- :func:`server_context`: what the inbound listener wraps accepted connections with.
  TLS 1.2 or newer (1.3 is preferred: OpenSSL picks the highest both sides speak), a
  client certificate is *required* and verified against the mesh roots; no hostname
  checks (a workload is named by the URI SAN, checked after the handshake with
  :func:`peer_spiffe_id`).
- :func:`client_context`: what upstream connections to other sidecars use: verifies
  the server's chain against the mesh roots, ``check_hostname`` off (the caller checks
  the peer's SPIFFE ID against the one it expected), presents our certificate.
- :func:`control_plane_context`: for HTTPS to meshd: verifies meshd's certificate
  against the mesh roots (plus ``--ca-file``) *with* the hostname check on, and
  presents our certificate when we hold one (renewal and every other call over mTLS).

Python's ``load_cert_chain`` only reads files, so the key and chain are written to
``<state-dir>/tls/`` (mode 0700) in a file of mode 0600 — never to a shared temp dir.
The file is written under a temporary name, fsynced, loaded, then renamed to
``credentials.pem``: the contexts hold exactly the bytes written, even if another
writer raced us, and the directory never shows a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meshd.spiffe import SpiffeId
from sidecar.x509_reader import (
    der_to_pem,
    pem_certificate,
    pem_certificates,
    read_certificate,
    spiffe_id_in,
)

MATERIAL_DIR = "tls"
CREDENTIALS_FILE = "credentials.pem"
MATERIAL_DIR_MODE = 0o700
MATERIAL_FILE_MODE = 0o600

DEFAULT_ALPN: tuple[str, ...] = ("http/1.1",)
"""What the contexts offer/accept by ALPN until the proxy speaks HTTP/2; it passes
``("h2", "http/1.1")`` then (``IdentityManager(alpn=...)``)."""

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True, slots=True, eq=False)
class TlsContexts:
    """The three contexts of one identity (one certificate + one set of roots)."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    control: ssl.SSLContext


# --- roots --------------------------------------------------------------------------------


def root_id(pem: str) -> str:
    """The SHA-256 fingerprint of a root's DER (hex): how meshd names a root."""
    return hashlib.sha256(pem_certificate(pem)).hexdigest()


def bundle_digest(roots: Sequence[str]) -> str:
    """The digest meshd gives a set of roots (``TrustBundle.digest``): it changes exactly
    when the set changes."""
    ids = sorted(root_id(pem) for pem in roots)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def normalize_roots(roots: Sequence[str]) -> tuple[str, ...]:
    """Each root once (by fingerprint), in the order given, as clean PEM. A bundle entry
    holding several certificates is split. Raises ValueError naming a root that is not
    a PEM certificate."""
    seen: set[str] = set()
    out: list[str] = []
    for i, text in enumerate(roots):
        try:
            ders = pem_certificates(text)
        except ValueError as exc:
            raise ValueError(f"trust root {i + 1} is not a PEM certificate: {exc}") from exc
        for der in ders:
            fingerprint = hashlib.sha256(der).hexdigest()
            if fingerprint not in seen:
                seen.add(fingerprint)
                out.append(der_to_pem(der))
    return tuple(out)


# --- the contexts -------------------------------------------------------------------------


def _base(purpose: int, roots: Sequence[str], alpn: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.verify_mode = ssl.CERT_REQUIRED
    if roots:
        ctx.load_verify_locations(cadata="".join(roots))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_context(
    credentials: Path, roots: Sequence[str], alpn: Sequence[str] = DEFAULT_ALPN
) -> ssl.SSLContext:
    """mTLS server side: our certificate; the client's required and chained to ``roots``."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, roots, alpn)
    ctx.load_cert_chain(str(credentials))
    return ctx


def client_context(
    credentials: Path, roots: Sequence[str], alpn: Sequence[str] = DEFAULT_ALPN
) -> ssl.SSLContext:
    """mTLS client side: the server's chain verified against ``roots``, no hostname check
    (compare :func:`peer_spiffe_id` with the identity expected), our certificate shown."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, roots, alpn)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED  # check_hostname=False must not weaken this
    ctx.load_cert_chain(str(credentials))
    return ctx


def control_plane_context(
    roots: Sequence[str],
    *,
    ca_file: Path | None = None,
    ca_pem: str = "",
    credentials: Path | None = None,
) -> ssl.SSLContext:
    """For HTTPS to meshd: its certificate chained to ``roots``, ``ca_file`` or
    ``ca_pem`` (the CA file's content), its address checked against the certificate's
    SAN; our certificate presented when ``credentials`` is given. With none of them,
    the system's trust store is used (meshd behind a publicly trusted certificate)."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, roots, ())
    ctx.check_hostname = True
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    if ca_pem:
        ctx.load_verify_locations(cadata=ca_pem)
    if not roots and ca_file is None and not ca_pem:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if credentials is not None:
        ctx.load_cert_chain(str(credentials))
    return ctx


def prepare_material_dir(state_dir: Path) -> Path:
    """``<state_dir>/tls``, mode 0700 (tightened if it was looser). Raises OSError."""
    path = state_dir / MATERIAL_DIR
    path.mkdir(mode=MATERIAL_DIR_MODE, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise OSError(f"{path} belongs to another user (uid {info.st_uid})")
    if stat.S_IMODE(info.st_mode) != MATERIAL_DIR_MODE:
        path.chmod(MATERIAL_DIR_MODE)
    return path


def build_contexts(
    state_dir: Path,
    credentials_pem: bytes,
    roots: Sequence[str],
    *,
    ca_pem: str = "",
    alpn: Sequence[str] = DEFAULT_ALPN,
    keep: bool = True,
    check_roots: Sequence[str] = (),
) -> TlsContexts:
    """Write ``credentials_pem`` (private key, leaf, intermediates) to the private dir
    and load the three contexts from it; the control-plane context also trusts
    ``ca_pem``. Blocking: run it in a worker thread. Raises OSError (the file) or
    ssl.SSLError (key and certificate do not match, bad PEM).

    ``keep=False`` (the worker processes of ``--workers``): the temporary file is
    removed once loaded instead of becoming ``credentials.pem``, so only the main
    process owns that file and a worker leaves no copy of the key behind.

    ``check_roots`` (a certificate just issued): first prove, with a TLS handshake in
    memory, that the certificate chains to one of these roots and is valid now;
    ValueError saying why not, and nothing is written or kept."""
    directory = prepare_material_dir(state_dir)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{CREDENTIALS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), MATERIAL_FILE_MODE)
            f.write(credentials_pem)
            f.flush()
            os.fsync(f.fileno())
        path = Path(tmp)
        if check_roots:
            check_chain(path, check_roots)
        contexts = TlsContexts(
            server=server_context(path, roots, alpn),
            client=client_context(path, roots, alpn),
            control=control_plane_context(roots, ca_pem=ca_pem, credentials=path),
        )
        if not keep:
            return contexts  # the finally clause unlinks the temporary file
        os.replace(tmp, directory / CREDENTIALS_FILE)
        tmp = ""
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return contexts


_X509_V_FLAG_NO_CHECK_TIME = 0x200000
"""OpenSSL's flag (not among ``ssl.VerifyFlags``) to verify a chain regardless of dates."""


def check_chain(credentials: Path, roots: Sequence[str]) -> None:
    """OpenSSL's verdict on the certificate in ``credentials``: a handshake in memory
    (no socket) between a server presenting it and a client trusting only ``roots``.
    This checks the signatures along the chain, what the certificates may be used for
    and that the key is the certificate's, as peers will; not the validity dates (see
    below). ValueError saying what fails."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server.load_cert_chain(str(credentials))
    except ssl.SSLError as exc:
        raise ValueError(f"the key and certificate do not load ({exc.reason or exc})") from exc
    client = _base(ssl.PROTOCOL_TLS_CLIENT, roots, ())
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    # Not the dates: the caller judges expiry by its own clock, and a host whose clock
    # runs behind meshd's must still take a certificate that starts "in the future".
    client.verify_flags = client.verify_flags | _X509_V_FLAG_NO_CHECK_TIME
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client.wrap_bio(to_client, to_server, server_side=False)
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(8):  # TLS 1.3 needs two round trips; more means something is stuck
        for name, end in (("client", client_end), ("server", server_end)):
            if done[name]:
                continue
            try:
                end.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                raise ValueError(
                    f"it does not chain to any of the trust roots meshd sent ({exc.verify_message})"
                ) from exc
            except ssl.SSLError as exc:
                raise ValueError(f"a TLS handshake with it fails ({exc.reason or exc})") from exc
        if done["client"]:
            return
    raise ValueError("a TLS handshake with it does not complete")


def remove_material(state_dir: Path) -> None:
    """Delete the credentials file (and leftovers of a crash while writing it)."""
    directory = state_dir / MATERIAL_DIR
    for path in [directory / CREDENTIALS_FILE, *directory.glob(f".{CREDENTIALS_FILE}.*.tmp")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --- peers ----------------------------------------------------------------------------------


class PeerCertSource(Protocol):
    """``ssl.SSLObject``, ``ssl.SSLSocket`` or ``trio.SSLStream`` (which forwards it)."""

    def getpeercert(self, binary_form: bool = ...) -> Any: ...


def peer_spiffe_id(conn: PeerCertSource) -> SpiffeId | None:
    """The SPIFFE ID of the peer of a TLS connection whose handshake is done and whose
    context verified the peer (the contexts above all do); None when the peer sent no
    certificate or its certificate names no single workload. Cheap enough to call once
    per connection: OpenSSL has decoded the certificate already."""
    decoded = conn.getpeercert()
    if decoded:
        sans = decoded.get("subjectAltName", ())
        return spiffe_id_in([value for kind, value in sans if kind == "URI"])
    # Not verified by the context (none of ours): only the raw certificate is given.
    der = conn.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return read_certificate(bytes(der)).spiffe_id
    except ValueError:
        return None
