"""The signing policy (``meshd.ca.policy.check_csr``): every refusal with its reason,
first pure (no CA at all), then through each CA backend, which must refuse the same CSRs
before anything is signed."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshd.ca.base import CertificateAuthority, SignRequest
from meshd.ca.policy import check_csr
from meshd.errors import CsrRejected
from tests.ca.helpers import (
    WEB,
    ec_key,
    make_csr,
    rsa_key,
    sha1_csr,
    tampered_csr,
)


def _usage(**flags: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    )
    values = {name: flags.get(name, False) for name in names}
    return x509.KeyUsage(**values, encipher_only=False, decipher_only=False)


URI = x509.UniformResourceIdentifier


@dataclass(frozen=True)
class Case:
    id: str
    csr: Callable[[], str]
    rule: str
    says: tuple[str, ...]
    """Substrings the reason must hold (what was found, what to do)."""


REFUSED = [
    Case("empty", lambda: "", "pem", ("empty", "PEM")),
    Case("not-pem", lambda: "hello, CA", "pem", ("cannot be parsed", "CERTIFICATE REQUEST")),
    Case(
        "truncated-pem",
        lambda: make_csr(ec_key())[:120] + "\n-----END CERTIFICATE REQUEST-----\n",
        "pem",
        ("cannot be parsed",),
    ),
    Case("oversized", lambda: "A" * 70_000, "pem", ("bytes",)),
    Case("bad-self-signature", lambda: tampered_csr(ec_key()), "signature", ("does not verify",)),
    Case("sha1-signature", lambda: sha1_csr(ec_key()), "signature", ("SHA1", "SHA-256")),
    Case("rsa-1024", lambda: make_csr(rsa_key(1024)), "key", ("RSA 1024-bit", "P-256")),
    Case("ec-p521", lambda: make_csr(ec_key(ec.SECP521R1())), "key", ("EC secp521r1",)),
    Case("ec-p224", lambda: make_csr(ec_key(ec.SECP224R1())), "key", ("EC secp224r1",)),
    Case("ed25519", lambda: make_csr(ed25519.Ed25519PrivateKey.generate()), "key", ("Ed25519",)),
    Case(
        "dns-san",
        lambda: make_csr(ec_key(), sans=[x509.DNSName("web.default.svc")]),
        "san",
        ("DNS name 'web.default.svc'",),
    ),
    Case(
        "identity-plus-dns",
        lambda: make_csr(ec_key(), sans=[URI(str(WEB)), x509.DNSName("evil.example")]),
        "san",
        ("DNS name 'evil.example'",),
    ),
    Case(
        "ip-san",
        lambda: make_csr(ec_key(), sans=[x509.IPAddress(ipaddress.ip_address("10.1.2.3"))]),
        "san",
        ("IP address 10.1.2.3",),
    ),
    Case(
        "email-san",
        lambda: make_csr(ec_key(), sans=[x509.RFC822Name("web@example.com")]),
        "san",
        ("email address 'web@example.com'",),
    ),
    Case(
        "other-uri",
        lambda: make_csr(ec_key(), sans=[URI("https://web.example.com/")]),
        "san",
        ("URI 'https://web.example.com/'",),
    ),
    Case(
        "other-spiffe-id",
        lambda: make_csr(ec_key(), sans=[URI("spiffe://cluster.local/ns/default/sa/payments")]),
        "san",
        ("another SPIFFE ID 'spiffe://cluster.local/ns/default/sa/payments'",),
    ),
    Case(
        "other-trust-domain",
        lambda: make_csr(ec_key(), sans=[URI("spiffe://evil.org/ns/default/sa/web")]),
        "san",
        ("another SPIFFE ID 'spiffe://evil.org/ns/default/sa/web'",),
    ),
    Case(
        "ca-true",
        lambda: make_csr(ec_key(), extensions=[x509.BasicConstraints(ca=True, path_length=None)]),
        "basic-constraints",
        ("CA:true",),
    ),
    Case(
        "key-cert-sign",
        lambda: make_csr(ec_key(), extensions=[_usage(digital_signature=True, key_cert_sign=True)]),
        "key-usage",
        ("keyCertSign",),
    ),
    Case(
        "crl-sign",
        lambda: make_csr(ec_key(), extensions=[_usage(crl_sign=True)]),
        "key-usage",
        ("cRLSign",),
    ),
    Case(
        "eku-code-signing",
        lambda: make_csr(
            ec_key(),
            extensions=[
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]
                )
            ],
        ),
        "extended-key-usage",
        ("codeSigning",),
    ),
    Case(
        "eku-any",
        lambda: make_csr(
            ec_key(),
            extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])],
        ),
        "extended-key-usage",
        ("anyExtendedKeyUsage",),
    ),
]

ACCEPTED = [
    ("no-san", lambda: make_csr(ec_key())),
    ("identity-san", lambda: make_csr(ec_key(), sans=[URI(str(WEB))])),
    ("ec-p384", lambda: make_csr(ec_key(ec.SECP384R1()), hash_algorithm=hashes.SHA384())),
    ("rsa-2048", lambda: make_csr(rsa_key(2048))),
    ("rsa-3072", lambda: make_csr(rsa_key(3072))),
    (
        "subject-ignored",
        lambda: make_csr(
            ec_key(), subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")])
        ),
    ),
    (
        "leaf-extensions",
        lambda: make_csr(
            ec_key(),
            sans=[URI(str(WEB))],
            extensions=[
                x509.BasicConstraints(ca=False, path_length=None),
                _usage(digital_signature=True, key_agreement=True),
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
            ],
        ),
    ),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_check_csr_refuses_with_a_reason(case: Case) -> None:
    with pytest.raises(CsrRejected) as caught:
        check_csr(case.csr(), WEB)
    error = caught.value
    assert error.status == 400
    assert error.context["rule"] == case.rule
    assert error.context["identity"] == str(WEB)
    for text in case.says:
        assert text in error.detail, error.detail


@pytest.mark.parametrize("make", [m for _, m in ACCEPTED], ids=[i for i, _ in ACCEPTED])
def test_check_csr_accepts(make: Callable[[], str]) -> None:
    csr = check_csr(make(), WEB)
    assert csr.is_signature_valid


def test_refusal_names_the_identity_the_credential_allows() -> None:
    csr = make_csr(ec_key(), sans=[URI("spiffe://cluster.local/ns/default/sa/payments")])
    with pytest.raises(CsrRejected) as caught:
        check_csr(csr, WEB)
    assert str(WEB) in caught.value.detail
    assert "Ask for no SAN" in caught.value.detail


# --- the same refusals through each backend ------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
async def test_ca_refuses_before_signing(ca: CertificateAuthority, case: Case) -> None:
    with pytest.raises(CsrRejected) as caught:
        await ca.sign(SignRequest(case.csr(), WEB))
    assert caught.value.context["rule"] == case.rule
    for text in case.says:
        assert text in caught.value.detail
