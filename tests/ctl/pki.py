"""CA certificates for meshctl's trust tests (roots only: no TLS happens in unit tests)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class CaRoot:
    pem: str
    der: bytes
    fingerprint: str
    """SHA-256, ``AB:CD:...`` as openssl prints it."""
    id: str
    """SHA-256 hex, as meshd names roots."""


_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def make_root(name: str = "meshd test root") -> CaRoot:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    digest = cert.fingerprint(hashes.SHA256())
    return CaRoot(
        pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        der=cert.public_bytes(serialization.Encoding.DER),
        fingerprint=":".join(f"{b:02X}" for b in digest),
        id=digest.hex(),
    )


def roots_body(
    *roots: CaRoot, signing: CaRoot | None = None, digest: str = "d1g3st"
) -> dict[str, object]:
    """A ``GET /v1/ca/roots`` answer."""
    signer = signing or roots[0]
    return {
        "trustDomain": "cluster.local",
        "digest": digest,
        "roots": [
            {
                "id": r.id,
                "pem": r.pem,
                "notAfter": "2035-01-01T00:00:00+00:00",
                "signing": r is signer,
            }
            for r in roots
        ],
    }
