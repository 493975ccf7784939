"""The stdlib certificate reader against ``cryptography``: the same serial, validity,
public key and URI SANs for the certificates meshd and Vault issue, and only ValueError
for anything malformed (the reader sees certificates from the network)."""

from __future__ import annotations

import contextlib
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.spiffe import parse_spiffe_id
from sidecar.x509_reader import (
    cert_facts,
    der_to_pem,
    pem_certificate,
    pem_certificates,
    pem_der,
    read_certificate,
    spiffe_id_in,
)
from tests.sidecar.test_identity_support import SPIFFE, TestCa, pem

UTC = datetime.UTC


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _self_signed(
    *,
    names: list[x509.GeneralName] | None = None,
    serial: int = 12345,
    start: datetime.datetime = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    end: datetime.datetime = datetime.datetime(2026, 1, 3, 3, 4, 5, tzinfo=UTC),
) -> x509.Certificate:
    key = _key()
    name = x509.Name([])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_a_workload_certificate_reads_like_cryptography_reads_it() -> None:
    ca = TestCa(intermediate=True)
    leaf = ca.issue(_key().public_key(), ips=("198.18.0.5",))
    facts = cert_facts(pem(leaf))
    assert facts.serial == leaf.serial_number
    assert facts.serial_hex == f"{leaf.serial_number:x}"
    assert facts.not_before == leaf.not_valid_before_utc
    assert facts.not_after == leaf.not_valid_after_utc
    assert facts.uris == (SPIFFE,)
    assert facts.spki == _spki(leaf)
    assert facts.spiffe_id == parse_spiffe_id(SPIFFE)
    # CA certificates (no SAN) read too.
    root = cert_facts(ca.root_pem)
    assert root.uris == ()
    assert root.spiffe_id is None
    assert root.spki == _spki(ca.root)


def test_uri_sans_among_other_names_and_dates_after_2049() -> None:
    cert = _self_signed(
        names=[
            x509.DNSName("api.default.svc"),
            x509.UniformResourceIdentifier("https://example.test/x"),
            x509.UniformResourceIdentifier(SPIFFE),
        ],
        serial=(1 << 158) + 7,
        # UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5).
        start=datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        end=datetime.datetime(2051, 6, 1, tzinfo=UTC),
    )
    facts = read_certificate(_der(cert))
    assert facts.uris == ("https://example.test/x", SPIFFE)
    assert facts.spiffe_id == parse_spiffe_id(SPIFFE)
    assert facts.serial == (1 << 158) + 7
    assert facts.not_before == datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert facts.not_after == datetime.datetime(2051, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("uris", "expected"),
    [
        ([], None),
        (["https://example.test"], None),
        ([SPIFFE], SPIFFE),
        ([SPIFFE, "spiffe://cluster.local/ns/default/sa/other"], None),  # ambiguous
        (["spiffe://cluster.local/not/a/workload"], None),
        (["SPIFFE://cluster.local/ns/default/sa/reviews"], None),  # must be lower case
    ],
)
def test_a_workload_has_exactly_one_spiffe_id(uris: list[str], expected: str | None) -> None:
    found = spiffe_id_in(uris)
    assert (str(found) if found else None) == expected


def test_bundles_split_and_round_trip_to_the_same_pem() -> None:
    ca = TestCa(intermediate=True)
    bundle = "junk before\n" + ca.chain_pem + "\n\n" + ca.root_pem + "trailing text"
    ders = pem_certificates(bundle)
    assert ders == [_der(ca.chain[0]), _der(ca.root)]
    assert [der_to_pem(d) for d in ders] == [pem(ca.chain[0]), pem(ca.root)]
    assert pem_certificate(ca.root_pem) == _der(ca.root)
    with pytest.raises(ValueError, match="expected one certificate, found 2"):
        pem_certificate(bundle)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no PEM certificate"),
        ("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", "base64"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "DER"),
    ],
)
def test_what_is_not_a_certificate_is_a_value_error(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        pem_certificates(text)


def test_trailing_bytes_and_truncation_are_refused() -> None:
    der = _der(_self_signed(names=[x509.UniformResourceIdentifier(SPIFFE)]))
    with pytest.raises(ValueError, match="bytes after the certificate"):
        read_certificate(der + b"\x00")
    with pytest.raises(ValueError, match="longer than its container"):
        read_certificate(der[:-1])


def test_a_pem_block_by_label() -> None:
    key = _key()
    text = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    assert pem_der(text, "PRIVATE KEY") == key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="expected one PEM CERTIFICATE block, found 0"):
        pem_der(text, "CERTIFICATE")


_SAMPLE = _der(
    _self_signed(
        names=[x509.DNSName("a.test"), x509.UniformResourceIdentifier(SPIFFE)],
        serial=99,
    )
)


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(_SAMPLE) - 1),
    value=st.integers(min_value=0, max_value=255),
    cut=st.integers(min_value=0, max_value=len(_SAMPLE)),
)
def test_damaged_certificates_raise_only_value_error(position: int, value: int, cut: int) -> None:
    damaged = bytearray(_SAMPLE)
    damaged[position] = value
    for data in (bytes(damaged), _SAMPLE[:cut]):
        with contextlib.suppress(ValueError):
            read_certificate(data)  # anything else (IndexError...) fails the test
