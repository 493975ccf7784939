"""The workload (leaf) certificate profile, shared by every CA backend.

The embedded CA builds leaves with :func:`build_leaf`; the Vault backend asks Vault for
the same profile through its role settings. :func:`profile_problems` says how a leaf
departs from the profile (tests check both backends with it).

The profile:

- subject empty; SAN = the SPIFFE ID as the only URI (plus DNS names / IP addresses only
  when meshd asks for its own serving certificate), critical because the subject is empty
  (RFC 5280 4.2.1.6);
- BasicConstraints CA:false, critical; KeyUsage digitalSignature (plus keyEncipherment for
  RSA keys, which the embedded CA sets and Vault's role may not: TLS 1.3 and ECDHE never
  use it), critical; ExtendedKeyUsage serverAuth + clientAuth;
- SubjectKeyIdentifier, AuthorityKeyIdentifier (the issuer's SKI); a random serial;
- notBefore = now - :data:`CLOCK_SKEW`; notAfter = now + ttl, with ttl at most
  ``MAX_LEAF_TTL`` and notAfter never after the issuer's notAfter.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from meshd.ca.base import MAX_LEAF_TTL
from meshd.errors import BadRequest, CaUnavailable, ConfigError
from meshd.spiffe import SpiffeId

__all__ = [
    "CLOCK_SKEW",
    "build_leaf",
    "effective_ttl",
    "leaf_sans",
    "leaf_validity",
    "profile_problems",
    "san_problems",
    "signature_hash",
]

CLOCK_SKEW = timedelta(minutes=1)
"""Leaves are valid from a minute before they are signed, for peers whose clock is behind."""

_EMPTY = x509.Name([])
_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def effective_ttl(ttl: timedelta) -> timedelta:
    """``ttl`` capped at ``MAX_LEAF_TTL``; ``BadRequest`` when it is not positive."""
    if ttl <= timedelta(0):
        raise BadRequest(f"certificate TTL must be positive, not {ttl}", field="ttl")
    return min(ttl, MAX_LEAF_TTL)


def leaf_validity(
    ttl: timedelta, issuer_not_after: datetime, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """(notBefore, notAfter) of a leaf signed ``now`` (UTC, whole seconds) with ``ttl``
    under an issuer valid until ``issuer_not_after``."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    not_after = min(now + effective_ttl(ttl), issuer_not_after)
    if not_after <= now:
        raise CaUnavailable(
            f"the signing CA certificate expired at {issuer_not_after:%Y-%m-%d %H:%M:%S} UTC; "
            "add a new root and activate it (meshctl ca rotate)",
        )
    return now - CLOCK_SKEW, not_after


def leaf_sans(
    identity: SpiffeId, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = ()
) -> list[x509.GeneralName]:
    """The SAN entries of a leaf: the SPIFFE ID, then DNS names, then IP addresses.
    ``ConfigError`` for a DNS name or IP address that is not one (they come from
    meshd's settings, never from a CSR)."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(identity))]
    for dns in dns_names:
        if not dns or len(dns) > 253 or any(c.isspace() for c in dns) or not dns.isascii():
            raise ConfigError(
                f"{dns!r} is not a DNS name for meshd's serving certificate; give ASCII host names",
                field="dns_names",
            )
        names.append(x509.DNSName(dns))
    for ip in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as exc:
            raise ConfigError(
                f"{ip!r} is not an IP address for meshd's serving certificate",
                field="ip_addresses",
            ) from exc
    return names


def signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash an issuer's key signs with: SHA-384 for P-384 and larger curves, none
    for EdDSA, SHA-256 otherwise."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _key_usage(public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def build_leaf(
    public_key: CertificatePublicKeyTypes,
    identity: SpiffeId,
    ttl: timedelta,
    issuer: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    now: datetime | None = None,
) -> x509.Certificate:
    """A leaf for ``public_key`` (taken from a CSR that passed ``check_csr``), signed
    by ``issuer``/``issuer_key``, in the profile above."""
    not_before, not_after = leaf_validity(ttl, issuer.not_valid_after_utc, now)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_EMPTY)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(leaf_sans(identity, dns_names, ip_addresses)),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(public_key), critical=True)
        .add_extension(_EKU, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(issuer), critical=False)
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))


# --- checking ------------------------------------------------------------------------------


def san_problems(
    cert: x509.Certificate,
    identity: SpiffeId,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> list[str]:
    """How the leaf's SAN differs from exactly ``identity`` (+ the given names), and
    whether it is (wrongly) a CA: the checks the Vault backend makes on every leaf."""
    problems: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ["no subjectAltName"]
    want = set(leaf_sans(identity, dns_names, ip_addresses))
    have = list(san.value)
    if set(have) != want or len(have) != len(want):
        problems.append(
            f"SANs are {[str(n.value) for n in have]}, not {[str(n.value) for n in want]}"
        )
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            problems.append("BasicConstraints CA:true on a leaf")
    except x509.ExtensionNotFound:
        pass
    return problems


def profile_problems(
    cert: x509.Certificate,
    identity: SpiffeId,
    *,
    issuer: x509.Certificate | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    ttl: timedelta | None = None,
    signed_at: datetime | None = None,
) -> list[str]:
    """Every way ``cert`` departs from the leaf profile; empty when it fits. With
    ``issuer``, also the AKI and the notAfter cap; with ``ttl`` and ``signed_at``, that
    the validity is the requested one (within a few seconds)."""
    problems = san_problems(cert, identity, dns_names, ip_addresses)
    exts = cert.extensions
    if len(cert.subject) != 0:
        problems.append(f"subject {cert.subject.rfc4514_string()!r} is not empty")

    def ext(oid: x509.ObjectIdentifier, label: str) -> x509.Extension[x509.ExtensionType] | None:
        try:
            return exts.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            problems.append(f"no {label} extension")
            return None

    san = ext(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, "subjectAltName")
    if san is not None and not san.critical:
        problems.append("subjectAltName is not critical although the subject is empty")
    bc = ext(ExtensionOID.BASIC_CONSTRAINTS, "basicConstraints")
    if bc is not None and not bc.critical:
        problems.append("basicConstraints is not critical")
    ku = ext(ExtensionOID.KEY_USAGE, "keyUsage")
    if ku is not None and isinstance(ku.value, x509.KeyUsage):
        usage = ku.value
        if not ku.critical:
            problems.append("keyUsage is not critical")
        if not usage.digital_signature:
            problems.append("keyUsage lacks digitalSignature")
        if usage.key_cert_sign or usage.crl_sign:
            problems.append("keyUsage has keyCertSign/cRLSign")
        if usage.key_encipherment and not isinstance(cert.public_key(), rsa.RSAPublicKey):
            problems.append("keyUsage has keyEncipherment on a non-RSA key")
        if usage.content_commitment or usage.data_encipherment:
            problems.append("keyUsage has contentCommitment/dataEncipherment")
    eku = ext(ExtensionOID.EXTENDED_KEY_USAGE, "extendedKeyUsage")
    if (
        eku is not None
        and isinstance(eku.value, x509.ExtendedKeyUsage)
        and set(eku.value) != set(_EKU)
    ):
        names = [oid.dotted_string for oid in eku.value]
        problems.append(f"extendedKeyUsage is {names}, not serverAuth+clientAuth")
    ski = ext(ExtensionOID.SUBJECT_KEY_IDENTIFIER, "subjectKeyIdentifier")
    if ski is not None and isinstance(ski.value, x509.SubjectKeyIdentifier):
        want_ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
        if ski.value.digest != want_ski.digest:
            problems.append("subjectKeyIdentifier is not the SHA-1 of the leaf's key")
    aki = ext(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, "authorityKeyIdentifier")
    if issuer is not None:
        if aki is not None and isinstance(aki.value, x509.AuthorityKeyIdentifier):
            want_aki = _authority_key_id(issuer).key_identifier
            if aki.value.key_identifier != want_aki:
                problems.append("authorityKeyIdentifier is not the issuer's key identifier")
        if cert.not_valid_after_utc > issuer.not_valid_after_utc:
            problems.append("notAfter is later than the issuer's notAfter")
        if cert.issuer != issuer.subject:
            problems.append("issuer name is not the issuer's subject")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if lifetime > MAX_LEAF_TTL + CLOCK_SKEW + timedelta(seconds=5):
        problems.append(f"lifetime {lifetime} is longer than the {MAX_LEAF_TTL} cap")
    if signed_at is not None:
        skew = signed_at - cert.not_valid_before_utc
        if not timedelta(seconds=50) <= skew <= timedelta(seconds=75):
            problems.append(f"notBefore is {skew} before signing, not about {CLOCK_SKEW}")
        if ttl is not None:
            want_after = signed_at + min(ttl, MAX_LEAF_TTL)
            if issuer is not None:
                want_after = min(want_after, issuer.not_valid_after_utc)
            if abs(cert.not_valid_after_utc - want_after) > timedelta(seconds=10):
                problems.append(f"notAfter is {cert.not_valid_after_utc}, not about {want_after}")
    if cert.serial_number < 2**63:
        problems.append("serial number has fewer than 64 random bits")
    return problems
