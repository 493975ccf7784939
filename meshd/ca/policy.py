"""The signing policy: which certificate signing requests meshd signs at all.

Pure (no I/O); every CA backend runs :func:`check_csr` before it signs, so the policy is
the same whether the embedded CA or Vault/OpenBao signs. A CSR is refused with
:class:`~meshd.errors.CsrRejected` and a reason the requester can act on.

What a CSR may carry: a key (EC P-256 or P-384, or RSA of 2048 to 8192 bits); no SAN at
all, or exactly the URI of the identity its credential is scoped to; BasicConstraints
only with CA:false; KeyUsage without keyCertSign/cRLSign; ExtendedKeyUsage only
serverAuth/clientAuth. The subject is ignored: leaves get an empty subject and meshd's
own extensions (``meshd.ca.leaf``); nothing else in the CSR is copied.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshd.errors import CsrRejected
from meshd.spiffe import SpiffeId

__all__ = ["MAX_CSR_BYTES", "MAX_RSA_BITS", "MIN_RSA_BITS", "check_csr", "describe_key"]

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
"""Larger RSA keys only cost the verifiers; nothing needs them."""

MAX_CSR_BYTES = 64 * 1024
"""A CSR is a few hundred bytes (a few KiB for RSA 8192); anything larger is refused
before it is parsed."""

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_ALLOWED_EKUS = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
_EKU_NAMES = {
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}
_WHAT_TO_USE = "use EC P-256 (recommended), EC P-384 or RSA of 2048 to 8192 bits"


def describe_key(key: object) -> str:
    """What kind of key ``key`` is, as a person would say it (``EC P-256``, ``RSA 1024-bit``)."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return f"DSA {key.key_size}-bit"
    if isinstance(key, x25519.X25519PublicKey | x448.X448PublicKey):
        return "X25519/X448 (key agreement only)"
    return type(key).__name__


def _reject(reason: str, identity: SpiffeId, rule: str) -> CsrRejected:
    return CsrRejected(reason, identity=str(identity), rule=rule)


def _parse(csr_pem: str, identity: SpiffeId) -> x509.CertificateSigningRequest:
    if not isinstance(csr_pem, str) or not csr_pem.strip():
        raise _reject(
            "the CSR is empty: send a PEM certificate request "
            "(-----BEGIN CERTIFICATE REQUEST-----)",
            identity,
            "pem",
        )
    data = csr_pem.encode("utf-8", "replace")
    if len(data) > MAX_CSR_BYTES:
        raise _reject(
            f"the CSR is {len(data):,} bytes, more than the {MAX_CSR_BYTES:,} allowed; "
            "send one certificate request of a normal size",
            identity,
            "pem",
        )
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise _reject(
            f"the CSR cannot be parsed ({exc}); send one PEM certificate request "
            "(-----BEGIN CERTIFICATE REQUEST-----), as `openssl req -new` or "
            "cryptography's CertificateSigningRequestBuilder make it",
            identity,
            "pem",
        ) from exc


def _check_key(csr: x509.CertificateSigningRequest, identity: SpiffeId) -> None:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _reject(
            f"the CSR's key is of an unsupported kind ({exc}); {_WHAT_TO_USE}",
            identity,
            "key",
        ) from exc
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
        return
    if isinstance(key, rsa.RSAPublicKey) and MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        return
    raise _reject(f"the CSR's key is {describe_key(key)}; {_WHAT_TO_USE}", identity, "key")


def _check_signature(csr: x509.CertificateSigningRequest, identity: SpiffeId) -> None:
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise _reject(
            f"the CSR is signed with an unsupported algorithm ({exc}); sign it with "
            "SHA-256 (ECDSA or RSA PKCS#1 v1.5)",
            identity,
            "signature",
        ) from exc
    if not isinstance(algorithm, _HASHES):
        name = "none" if algorithm is None else algorithm.name.upper()
        raise _reject(
            f"the CSR is signed with hash {name}; sign it with SHA-256, SHA-384 or SHA-512",
            identity,
            "signature",
        )
    if not csr.is_signature_valid:
        raise _reject(
            "the CSR's self-signature does not verify: it was altered after signing, or "
            "signed with a key other than the one it carries; make it again with the "
            "workload's key",
            identity,
            "signature",
        )


def _describe_san(name: x509.GeneralName, identity: SpiffeId) -> str:
    if isinstance(name, x509.UniformResourceIdentifier):
        if name.value.startswith("spiffe://"):
            return (
                f"another SPIFFE ID {name.value!r} (this credential may only ask for "
                f"{str(identity)!r})"
            )
        return f"URI {name.value!r}"
    if isinstance(name, x509.DNSName):
        return f"DNS name {name.value!r}"
    if isinstance(name, x509.IPAddress):
        return f"IP address {name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email address {name.value!r}"
    if isinstance(name, x509.DirectoryName):
        return f"directory name {name.value.rfc4514_string()!r}"
    if isinstance(name, x509.RegisteredID):
        return f"registered ID {name.value.dotted_string}"
    if isinstance(name, x509.OtherName):
        return f"other name {name.type_id.dotted_string}"
    return type(name).__name__


def _check_extensions(csr: x509.CertificateSigningRequest, identity: SpiffeId) -> None:
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise _reject(
            f"the CSR's extensions cannot be parsed ({exc}); make a CSR with no extensions "
            "(meshd adds the ones a workload certificate needs)",
            identity,
            "extensions",
        ) from exc
    wanted = str(identity)
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            extra = [name for name in value if name != x509.UniformResourceIdentifier(wanted)]
            if extra:
                names = "; ".join(_describe_san(name, identity) for name in extra)
                raise _reject(
                    f"the CSR asks for a subject alternative name other than {wanted!r}: "
                    f"{names}. Ask for no SAN (meshd adds the identity) or exactly the URI "
                    f"{wanted!r}",
                    identity,
                    "san",
                )
        elif isinstance(value, x509.BasicConstraints):
            if value.ca:
                raise _reject(
                    "the CSR asks to be a CA (BasicConstraints CA:true); workload "
                    "certificates are never CAs: drop the extension or set CA:false",
                    identity,
                    "basic-constraints",
                )
        elif isinstance(value, x509.KeyUsage):
            asked = [
                label
                for label, flag in (
                    ("keyCertSign", value.key_cert_sign),
                    ("cRLSign", value.crl_sign),
                )
                if flag
            ]
            if asked:
                raise _reject(
                    f"the CSR asks for key usage {' and '.join(asked)}, which only CAs have; "
                    "drop the KeyUsage extension (meshd sets digitalSignature)",
                    identity,
                    "key-usage",
                )
        elif isinstance(value, x509.ExtendedKeyUsage):
            others = [oid for oid in value if oid not in _ALLOWED_EKUS]
            if others:
                names = ", ".join(_EKU_NAMES.get(oid, oid.dotted_string) for oid in others)
                raise _reject(
                    f"the CSR asks for extended key usage {names}; workload certificates are "
                    "for serverAuth and clientAuth only: drop the others",
                    identity,
                    "extended-key-usage",
                )


def check_csr(csr_pem: str, identity: SpiffeId) -> x509.CertificateSigningRequest:
    """The parsed CSR when ``identity`` may have it signed; otherwise ``CsrRejected``
    naming the rule it breaks (``context["rule"]``: pem, key, signature, extensions, san,
    basic-constraints, key-usage, extended-key-usage) and what to change."""
    csr = _parse(csr_pem, identity)
    _check_key(csr, identity)
    _check_signature(csr, identity)
    _check_extensions(csr, identity)
    return csr
