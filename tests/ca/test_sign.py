"""Signing on each backend: the leaf chains to a bundle root (checked here and by OpenSSL
in a real mutual TLS handshake), carries exactly the identity, fits the leaf profile, and
lives as long as asked, never longer than the cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshd.ca.base import MAX_LEAF_TTL, CertificateAuthority, SignRequest
from meshd.ca.leaf import profile_problems
from meshd.errors import BadRequest
from meshd.spiffe import spiffe_id
from tests.ca.helpers import (
    REVIEWS,
    TRUST_DOMAIN,
    WEB,
    Endpoint,
    ec_key,
    handshake,
    ip,
    load,
    load_all,
    make_csr,
    rsa_key,
    uris,
    verify_chain,
)

pytestmark = pytest.mark.anyio


def _issuer(issued_chain: str, bundle_root_pem: str) -> x509.Certificate:
    chain = load_all(issued_chain)
    return chain[0] if chain else load(bundle_root_pem)


async def test_bundle_has_one_signing_root(ca: CertificateAuthority) -> None:
    bundle = await ca.bundle()
    assert bundle.trust_domain == TRUST_DOMAIN
    assert len(bundle.roots) == 1
    root = bundle.roots[0]
    assert bundle.signing_root == root.id
    cert = load(root.pem)
    assert cert.subject == cert.issuer
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert root.not_after == cert.not_valid_after_utc
    assert root.not_after - datetime.now(UTC) > timedelta(days=3600)
    assert bundle.root(root.id) == root
    assert bundle.pem() == root.pem


async def test_sign_happy_path(ca: CertificateAuthority, tmp_path: Path) -> None:
    bundle = await ca.bundle()
    key = ec_key()
    signed_at = datetime.now(UTC)
    issued = await ca.sign(SignRequest(make_csr(key), WEB))

    cert = load(issued.cert_pem)
    assert uris(cert) == [str(WEB)]
    assert issued.identity == WEB
    assert issued.root_id == bundle.signing_root
    assert issued.serial == f"{cert.serial_number:x}"
    assert (issued.not_before, issued.not_after) == (
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
    )
    assert cert.public_key() == key.public_key()

    root = verify_chain(issued.cert_pem, issued.chain_pem, bundle)
    assert root.fingerprint(hashes.SHA256()).hex() == issued.root_id
    issuer = _issuer(issued.chain_pem, bundle.root(issued.root_id).pem)
    problems = profile_problems(
        cert, WEB, issuer=issuer, ttl=timedelta(hours=24), signed_at=signed_at
    )
    assert problems == []

    # OpenSSL agrees: two workloads with leaves from this CA do mutual TLS on the bundle.
    peer_key = ec_key()
    peer = await ca.sign(SignRequest(make_csr(peer_key), REVIEWS))
    seen_by_server, seen_by_client = handshake(
        Endpoint.of(key, issued), Endpoint.of(peer_key, peer), bundle.pem(), tmp_path
    )
    assert seen_by_server == [str(REVIEWS)]
    assert seen_by_client == [str(WEB)]


async def test_csr_with_exactly_the_identity_san(ca: CertificateAuthority) -> None:
    csr = make_csr(ec_key(), sans=[x509.UniformResourceIdentifier(str(WEB))])
    issued = await ca.sign(SignRequest(csr, WEB))
    assert uris(load(issued.cert_pem)) == [str(WEB)]


async def test_subject_of_the_csr_is_ignored(ca: CertificateAuthority) -> None:
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "admin")])
    issued = await ca.sign(SignRequest(make_csr(ec_key(), subject=subject), WEB))
    cert = load(issued.cert_pem)
    assert len(cert.subject) == 0
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.DNSName) == []


@pytest.mark.parametrize("bits", [2048, 3072])
async def test_rsa_key(ca: CertificateAuthority, bits: int) -> None:
    key = rsa_key(bits)
    bundle = await ca.bundle()
    issued = await ca.sign(SignRequest(make_csr(key), WEB))
    cert = load(issued.cert_pem)
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    issuer = _issuer(issued.chain_pem, bundle.root(issued.root_id).pem)
    assert profile_problems(cert, WEB, issuer=issuer) == []
    verify_chain(issued.cert_pem, issued.chain_pem, bundle)


async def test_p384_key(ca: CertificateAuthority) -> None:
    issued = await ca.sign(SignRequest(make_csr(ec_key(ec.SECP384R1())), WEB))
    verify_chain(issued.cert_pem, issued.chain_pem, await ca.bundle())


async def test_ttl_is_honoured(ca: CertificateAuthority) -> None:
    signed_at = datetime.now(UTC)
    issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB, ttl=timedelta(hours=1)))
    lifetime = issued.not_after - signed_at
    assert timedelta(minutes=59) < lifetime <= timedelta(hours=1, seconds=1)
    skew = signed_at - issued.not_before
    assert timedelta(seconds=55) <= skew <= timedelta(seconds=65)


async def test_ttl_is_capped(ca: CertificateAuthority) -> None:
    signed_at = datetime.now(UTC)
    issued = await ca.sign(SignRequest(make_csr(ec_key()), WEB, ttl=timedelta(days=30)))
    lifetime = issued.not_after - signed_at
    assert MAX_LEAF_TTL - timedelta(minutes=1) < lifetime <= MAX_LEAF_TTL + timedelta(seconds=1)


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-5)])
async def test_ttl_must_be_positive(ca: CertificateAuthority, ttl: timedelta) -> None:
    with pytest.raises(BadRequest, match="TTL must be positive"):
        await ca.sign(SignRequest(make_csr(ec_key()), WEB, ttl=ttl))


async def test_serials_are_random_and_unique(ca: CertificateAuthority) -> None:
    serials = {(await ca.sign(SignRequest(make_csr(ec_key()), WEB))).serial for _ in range(5)}
    assert len(serials) == 5
    assert all(int(s, 16) >= 2**64 for s in serials)


async def test_meshd_serving_certificate_gets_dns_and_ip_names(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Only the caller (meshd itself) adds DNS/IP names; the CSR still may not."""
    meshd_id = x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/ns/meshd-system/sa/meshd")
    identity = spiffe_id(TRUST_DOMAIN, "meshd-system", "meshd")
    request = SignRequest(
        make_csr(ec_key()),
        identity,
        dns_names=("meshd.internal", "localhost"),
        ip_addresses=("127.0.0.1", "198.18.0.10"),
    )
    issued = await ca.sign(request)
    cert = load(issued.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [meshd_id.value]
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["localhost", "meshd.internal"]
    assert sorted(map(str, san.get_values_for_type(x509.IPAddress))) == [
        "127.0.0.1",
        "198.18.0.10",
    ]
    bundle = await ca.bundle()
    issuer = _issuer(issued.chain_pem, bundle.root(issued.root_id).pem)
    assert (
        profile_problems(
            cert,
            identity,
            issuer=issuer,
            dns_names=request.dns_names,
            ip_addresses=request.ip_addresses,
        )
        == []
    )
    verify_chain(issued.cert_pem, issued.chain_pem, bundle)
    assert ip("127.0.0.1") in san
