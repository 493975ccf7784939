"""What a sidecar does to get and use a certificate, for tests that play one: CSRs
(well-formed or deliberately not), and an HTTP client that authenticates with a
workload certificate over mTLS."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def make_csr(
    san_uris: tuple[str, ...] = (),
    *,
    key: PrivateKey | None = None,
    dns_names: tuple[str, ...] = (),
    ca: bool = False,
    key_cert_sign: bool = False,
    eku_code_signing: bool = False,
) -> tuple[PrivateKey, str]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in san_uris]
    names += [x509.DNSName(d) for d in dns_names]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    if key_cert_sign:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    if eku_code_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    csr = builder.sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def mtls_client(
    base_url: str, ca_file: Path, signed: dict[str, Any], key: PrivateKey, directory: Path,
    timeout: float = 10.0,
) -> httpx.Client:  # fmt: skip
    """An HTTPS client presenting the workload certificate in ``signed`` (a
    ``/v1/ca/sign`` answer) and verifying the server against ``ca_file``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_text(signed["certificate"] + signed["chain"])
    key_file.write_bytes(key_pem(key))
    key_file.chmod(0o600)
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(cert_file, key_file)
    return httpx.Client(base_url=base_url, verify=context, timeout=timeout)


def certificate(signed: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(signed["certificate"].encode())


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))
