"""Reading the few facts the sidecar needs from X.509 certificates, with the stdlib only.

The sidecar needs a certificate's serial, validity, public key and URI SANs, and it
needs PEM bundles split and cleaned. The ``cryptography`` package can do all of that,
but importing it costs every sidecar process about 8 MB of resident memory for code
that would run once per certificate. So this module walks the DER itself: only the
fields of RFC 5280's ``TBSCertificate`` it needs, strictly (definite lengths, no
trailing bytes), and raises ValueError for anything else. Signatures are never checked
here: chains are verified by OpenSSL (:func:`sidecar.tls_contexts.build_contexts`).

Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from meshd.spiffe import SpiffeId, parse_spiffe_id

_PEM_ANY = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)

_SEQUENCE = 0x30
_INTEGER = 0x02
_OID = 0x06
_BOOLEAN = 0x01
_OCTET_STRING = 0x04
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_VERSION = 0xA0  # [0] EXPLICIT
_EXTENSIONS = 0xA3  # [3] EXPLICIT
_URI_NAME = 0x86  # GeneralName uniformResourceIdentifier: [6] IMPLICIT IA5String
_SAN_OID = bytes.fromhex("551d11")  # 2.5.29.17, subjectAltName


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What the sidecar reads from a certificate. ``spki`` is the DER
    SubjectPublicKeyInfo, for comparing public keys."""

    serial: int
    not_before: datetime
    not_after: datetime
    uris: tuple[str, ...]
    spki: bytes

    @property
    def serial_hex(self) -> str:
        """How meshd and the logs write a serial."""
        return f"{self.serial:x}"

    @property
    def spiffe_id(self) -> SpiffeId | None:
        """The workload identity: exactly one ``spiffe://`` URI SAN of the form
        ``spiffe://TD/ns/NS/sa/SA``; None otherwise (none, several, malformed)."""
        return spiffe_id_in(self.uris)


def spiffe_id_in(uris: Sequence[str]) -> SpiffeId | None:
    """The single workload SPIFFE ID among URI SANs; None for none, several or a bad one."""
    spiffe = [u for u in uris if u[:9].lower() == "spiffe://"]
    if len(spiffe) != 1:
        return None
    try:
        return parse_spiffe_id(spiffe[0])
    except ValueError:
        return None


# --- PEM ------------------------------------------------------------------------------------


def _read_pem(text: str) -> list[tuple[bytes, CertFacts]]:
    """Every ``CERTIFICATE`` block in ``text``, in order: its DER and its facts (each one
    read once). ValueError when there is none or one is not a certificate."""
    blocks = [body for label, body in _PEM_ANY.findall(text) if label == "CERTIFICATE"]
    if not blocks:
        raise ValueError("no PEM certificate found")
    out = []
    for i, body in enumerate(blocks):
        der = _b64(body, f"certificate {i + 1}")
        out.append((der, read_certificate(der)))
    return out


def _single(text: str) -> tuple[bytes, CertFacts]:
    found = _read_pem(text)
    if len(found) != 1:
        raise ValueError(f"expected one certificate, found {len(found)}")
    return found[0]


def pem_certificates(text: str) -> list[bytes]:
    """The DER of every ``CERTIFICATE`` block in ``text``, in order. ValueError when there
    is none or one is not base64 of a certificate."""
    return [der for der, _ in _read_pem(text)]


def pem_certificate(text: str) -> bytes:
    """The DER of the single certificate in ``text``; ValueError otherwise."""
    return _single(text)[0]


def pem_block_types(text: str) -> list[str]:
    """The labels of the PEM blocks in ``text`` (``PRIVATE KEY``, ``CERTIFICATE``...)."""
    return [label for label, _ in _PEM_ANY.findall(text)]


def pem_der(text: str, label: str) -> bytes:
    """The DER of the single ``label`` block in ``text``; ValueError otherwise."""
    bodies = [body for found, body in _PEM_ANY.findall(text) if found == label]
    if len(bodies) != 1:
        raise ValueError(f"expected one PEM {label} block, found {len(bodies)}")
    return _b64(bodies[0], label.lower())


def der_to_pem(der: bytes) -> str:
    """One certificate as PEM, 64 characters a line (what ``cryptography`` writes)."""
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def cert_facts(pem: str) -> CertFacts:
    """The facts of the single certificate in ``pem``; ValueError when it is not one."""
    return _single(pem)[1]


def _b64(body: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64 ({exc})") from exc


# --- DER ------------------------------------------------------------------------------------


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at ``pos``."""
    if pos + 2 > end:
        raise ValueError("truncated DER element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not used in certificates")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError("non-minimal DER length")
        pos += count
    if pos + length > end:
        raise ValueError("DER element longer than its container")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    got, start, stop = _tlv(data, pos, end)
    if got != tag:
        raise ValueError(f"{what}: expected DER tag {tag:#04x}, found {got:#04x}")
    return start, stop


def _time(data: bytes, pos: int, end: int, what: str) -> tuple[datetime, int]:
    tag, start, stop = _tlv(data, pos, end)
    text = data[start:stop].decode("ascii", "replace")
    if tag == _UTC_TIME and len(text) == 13 and text.endswith("Z") and text[:12].isdigit():
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (
        tag == _GENERALIZED_TIME and len(text) == 15 and text.endswith("Z") and text[:14].isdigit()
    ):
        raise ValueError(f"{what} is not a UTCTime or GeneralizedTime in UTC")
    try:
        when = datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid time ({text})") from exc
    return when, stop


def read_certificate(der: bytes) -> CertFacts:
    """The facts of one DER certificate; ValueError when it is not a certificate."""
    start, stop = _expect(der, 0, len(der), _SEQUENCE, "certificate")
    if stop != len(der):
        raise ValueError("bytes after the certificate")
    tbs_start, tbs_end = _expect(der, start, stop, _SEQUENCE, "tbsCertificate")
    pos = tbs_start
    tag, _, after = _tlv(der, pos, tbs_end)
    if tag == _VERSION:
        pos = after
    serial_start, pos = _expect(der, pos, tbs_end, _INTEGER, "serial number")
    if serial_start == pos:
        raise ValueError("empty serial number")
    serial = int.from_bytes(der[serial_start:pos], "big", signed=True)
    _, pos = _expect(der, pos, tbs_end, _SEQUENCE, "signature algorithm")
    _, pos = _expect(der, pos, tbs_end, _SEQUENCE, "issuer")
    validity_start, pos = _expect(der, pos, tbs_end, _SEQUENCE, "validity")
    not_before, at = _time(der, validity_start, pos, "notBefore")
    not_after, at = _time(der, at, pos, "notAfter")
    if at != pos:
        raise ValueError("bytes after notAfter")
    _, pos = _expect(der, pos, tbs_end, _SEQUENCE, "subject")
    spki_at = pos
    _, pos = _expect(der, pos, tbs_end, _SEQUENCE, "subjectPublicKeyInfo")
    spki = der[spki_at:pos]
    uris: tuple[str, ...] = ()
    while pos < tbs_end:
        tag, inner, after = _tlv(der, pos, tbs_end)
        if tag == _EXTENSIONS:
            uris = _san_uris(der, inner, after)
        pos = after
    return CertFacts(serial, not_before, not_after, uris, spki)


def _san_uris(der: bytes, start: int, end: int) -> tuple[str, ...]:
    seq_start, seq_end = _expect(der, start, end, _SEQUENCE, "extensions")
    pos = seq_start
    uris: list[str] = []
    seen_san = False
    while pos < seq_end:
        ext_start, ext_end = _expect(der, pos, seq_end, _SEQUENCE, "extension")
        oid_start, oid_end = _expect(der, ext_start, ext_end, _OID, "extension id")
        at = oid_end
        tag, _, after = _tlv(der, at, ext_end)
        if tag == _BOOLEAN:
            at = after
        value_start, value_end = _expect(der, at, ext_end, _OCTET_STRING, "extension value")
        if der[oid_start:oid_end] == _SAN_OID:
            if seen_san:
                raise ValueError("two subjectAltName extensions")
            seen_san = True
            names_start, names_end = _expect(
                der, value_start, value_end, _SEQUENCE, "subjectAltName"
            )
            name = names_start
            while name < names_end:
                name_tag, name_start, name_end = _tlv(der, name, names_end)
                if name_tag == _URI_NAME:
                    try:
                        uris.append(der[name_start:name_end].decode("ascii"))
                    except UnicodeDecodeError as exc:
                        raise ValueError("a URI SAN is not ASCII") from exc
                name = name_end
        pos = ext_end
    return tuple(uris)
