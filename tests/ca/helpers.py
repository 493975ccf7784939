"""CSRs, chain checks and a real TLS handshake for the CA tests.

``verify_chain`` is a chain check written here (signatures, CA flags, path lengths,
validity, URI name constraints, EKU), because ``cryptography``'s own verifier refuses URI
name constraints altogether. ``handshake`` is the real thing: two OpenSSL endpoints
(Python's ``ssl``) doing mutual TLS over memory BIOs with the leaves and the bundle.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshd.ca.base import IssuedCert, TrustBundle
from meshd.spiffe import SpiffeId, spiffe_id

TRUST_DOMAIN = "cluster.local"
WEB = spiffe_id(TRUST_DOMAIN, "default", "web")
REVIEWS = spiffe_id(TRUST_DOMAIN, "shop", "reviews")

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_csr(
    key: Key,
    *,
    sans: Sequence[x509.GeneralName] | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
    subject: x509.Name | None = None,
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
) -> str:
    """A PEM CSR for ``key`` with exactly the SANs and extensions given."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for ext in extensions:
        builder = builder.add_extension(ext, critical=True)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        csr = builder.sign(key, None)
    else:
        csr = builder.sign(key, hash_algorithm or hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def csr_for(identity: SpiffeId, key: Key | None = None) -> str:
    """The CSR a sidecar sends: its identity as the only SAN."""
    return make_csr(key or ec_key(), sans=[x509.UniformResourceIdentifier(str(identity))])


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def _pem_csr(der: bytes) -> str:
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM).decode()


def sha1_csr(key: ec.EllipticCurvePrivateKey) -> str:
    """A CSR signed with ECDSA-SHA1, which cryptography's builder no longer makes:
    the request info of a normal CSR, signed again by hand."""
    tbs = x509.load_pem_x509_csr(make_csr(key).encode()).tbs_certrequest_bytes
    ecdsa_with_sha1 = _der(0x30, bytes.fromhex("06072a8648ce3d0401"))
    signature = _der(0x03, b"\x00" + key.sign(tbs, ec.ECDSA(hashes.SHA1())))
    return _pem_csr(_der(0x30, tbs + ecdsa_with_sha1 + signature))


def tampered_csr(key: ec.EllipticCurvePrivateKey) -> str:
    """A CSR whose self-signature no longer verifies: its subject was changed after
    signing (the request info re-encoded with another CN, the old signature kept)."""
    good = x509.load_pem_x509_csr(
        make_csr(key, subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aaaa")])).encode()
    )
    der = good.public_bytes(serialization.Encoding.DER)
    assert der.count(b"aaaa") == 1
    return _pem_csr(der.replace(b"aaaa", b"bbbb"))


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def load_all(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode()) if pem.strip() else []


def key_pem(key: CertificateIssuerPrivateKeyTypes | Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


# --- chain checks ----------------------------------------------------------------------------


class ChainError(AssertionError):
    """The chain does not verify; the message says why."""


E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _permitted(constraints: x509.NameConstraints, leaf: x509.Certificate) -> bool:
    """RFC 5280 URI name constraints: the URI's host equals the constraint, or is under
    it when the constraint starts with a dot. Other name types are not constrained here
    (meshd's roots constrain only URIs)."""
    permitted = [
        n.value
        for n in constraints.permitted_subtrees or []
        if isinstance(n, x509.UniformResourceIdentifier)
    ]
    excluded = [
        n.value
        for n in constraints.excluded_subtrees or []
        if isinstance(n, x509.UniformResourceIdentifier)
    ]
    for uri in uris(leaf):
        host = urlsplit(uri).hostname or ""

        def matches(rule: str, host: str = host) -> bool:
            return host.endswith(rule) if rule.startswith(".") else host == rule

        if permitted and not any(matches(r) for r in permitted):
            return False
        if any(matches(r) for r in excluded):
            return False
    return True


def verify_chain(
    cert_pem: str, chain_pem: str, bundle: TrustBundle, *, at: datetime | None = None
) -> x509.Certificate:
    """The bundle root that ``cert_pem`` + ``chain_pem`` chain to; ``ChainError`` naming
    the first check that fails otherwise."""
    at = at or datetime.now(UTC)
    leaf = load(cert_pem)
    path = [leaf, *load_all(chain_pem)]
    roots = [load(r.pem) for r in bundle.roots]
    top = path[-1]
    anchor = None
    for root in roots:
        try:
            top.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        anchor = root
        break
    if anchor is None:
        raise ChainError(
            f"{top.subject.rfc4514_string()!r} (issuer {top.issuer.rfc4514_string()!r}) was "
            f"issued by none of the {len(roots)} bundle roots"
        )
    full = [*path, anchor]
    for child, parent in itertools.pairwise(full):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise ChainError(f"{child.subject.rfc4514_string()!r}: bad signature ({exc})") from exc
    for depth, cert in enumerate(full):
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ChainError(f"certificate at depth {depth} is not valid at {at}")
        if depth == 0:
            continue
        bc = _ext(cert, x509.BasicConstraints)
        if bc is None or not bc.ca:
            raise ChainError(f"certificate at depth {depth} is not a CA")
        below = depth - 1  # CA certificates between it and the leaf
        if bc.path_length is not None and below > bc.path_length:
            raise ChainError(f"path length {bc.path_length} exceeded at depth {depth}")
        ku = _ext(cert, x509.KeyUsage)
        if ku is not None and not ku.key_cert_sign:
            raise ChainError(f"certificate at depth {depth} lacks keyCertSign")
        nc = _ext(cert, x509.NameConstraints)
        if nc is not None and not _permitted(nc, leaf):
            raise ChainError(f"name constraints of depth {depth} forbid {uris(leaf)}")
    eku = _ext(leaf, x509.ExtendedKeyUsage)
    if eku is None or {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} - set(eku):
        raise ChainError("leaf is not for both serverAuth and clientAuth")
    return anchor


# --- a real mutual TLS handshake ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a handshake: a key and what it sends (leaf + chain)."""

    key: Key
    cert_pem: str
    chain_pem: str

    @classmethod
    def of(cls, key: Key, issued: IssuedCert) -> Endpoint:
        return cls(key, issued.cert_pem, issued.chain_pem)


def _context(
    side: Endpoint, bundle_pem: str, directory: Path, name: str, server: bool
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem)
    cert_file = directory / f"{name}.pem"
    key_file = directory / f"{name}.key"
    cert_file.write_text(side.cert_pem + side.chain_pem)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem(side.key))
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def handshake(
    server: Endpoint,
    client: Endpoint,
    bundle_pem: str,
    directory: Path,
    *,
    client_bundle_pem: str | None = None,
) -> tuple[list[str], list[str]]:
    """Mutual TLS 1.3 between ``server`` and ``client``, each verifying the other
    against ``bundle_pem`` (the client against ``client_bundle_pem`` when given), with
    OpenSSL. Returns (the URIs the server saw, the URIs the client saw);
    ``ssl.SSLError`` when a side refuses the other."""
    directory.mkdir(parents=True, exist_ok=True)
    sctx = _context(server, bundle_pem, directory, "server", server=True)
    cctx = _context(client, client_bundle_pem or bundle_pem, directory, "client", server=False)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = cctx.wrap_bio(c_in, c_out, server_side=False)
    s = sctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, end in (("c", c), ("s", s)):
            if done[name]:
                continue
            try:
                end.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server checks the client's certificate on its last flight;
            # one round of application data makes sure both verdicts are in.
            c.write(b"ping")
            s_in.write(c_out.read())
            assert s.read(4) == b"ping"
            break
    else:
        raise AssertionError("handshake did not finish")
    seen_by_server = s.getpeercert(binary_form=True)
    seen_by_client = c.getpeercert(binary_form=True)
    assert seen_by_server is not None
    assert seen_by_client is not None
    return (
        uris(x509.load_der_x509_certificate(seen_by_server)),
        uris(x509.load_der_x509_certificate(seen_by_client)),
    )


# --- private CAs for the plug-in tests -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TestCa:
    __test__ = False

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_ca(
    name: str,
    issuer: TestCa | None = None,
    *,
    path_length: int | None = 1,
    ca: bool = True,
    validity: timedelta = timedelta(days=365),
) -> TestCa:
    key = ec_key()
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return TestCa(builder.sign(signer_key, hashes.SHA256()), key)


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def write_plugin_dir(
    directory: Path,
    *,
    ca_cert: str,
    ca_key: bytes,
    root_cert: str,
    cert_chain: str,
) -> Path:
    """Istio's cacerts files; the key with mode 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca-cert.pem").write_text(ca_cert)
    (directory / "root-cert.pem").write_text(root_cert)
    (directory / "cert-chain.pem").write_text(cert_chain)
    key_file = directory / "ca-key.pem"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ca_key)
    return directory


def forge_leaf(
    uri: str, issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey
) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A leaf for ``uri`` signed directly with a CA key (what a stolen intermediate key
    could make): to show the root's name constraint stops other trust domains."""
    key = ec_key()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return key, pem(cert)


def ip(value: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_address(value))
