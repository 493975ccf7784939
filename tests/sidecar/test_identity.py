"""The sidecar's identity without meshd: CSR shape, the renewal schedule and expiry
levels as pure functions, the private state file, and the IdentityManager's lifecycle
against a fake CA endpoint (a fake ``send``): first certificate with the join token,
retries, fatal refusals, renewal over mTLS, saved state, warnings as expiry nears."""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import stat
import time
from collections.abc import Awaitable, Callable
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.spiffe import parse_spiffe_id
from sidecar.http_client import HttpResponse
from sidecar.identity import (
    CertificateNotAccepted,
    Identity,
    IdentityError,
    JoinTokenRejected,
    SigningRejected,
    SigningUnavailable,
    expiry_level,
    renewal_fraction,
    renewal_time,
    retry_after_seconds,
)
from sidecar.identity_state import (
    STATE_FILE,
    SavedIdentity,
    decode_state,
    encode_state,
    read_state,
    save_state,
)
from sidecar.keygen import KeygenError, decode, make_key_and_csr, new_key_and_csr
from sidecar.tls_contexts import CREDENTIALS_FILE, MATERIAL_DIR, bundle_digest
from tests.sidecar.test_identity_support import (
    PROXY,
    SPIFFE,
    TOKEN,
    FakeMeshdCa,
    TestCa,
    key_pem,
    make_manager,
    messages,
    pem,
    problem,
    refused,
)

LOGGER = "sidecar.identity"
DAY = 86400.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- CSR ------------------------------------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def test_csr_has_an_empty_subject_and_only_the_spiffe_uri_san() -> None:
    made = make_key_and_csr(str(parse_spiffe_id(SPIFFE)))
    key = serialization.load_pem_private_key(made.key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert made.public_key_der == public_key_der(key.public_key())
    csr = x509.load_pem_x509_csr(made.csr_pem.encode())
    assert csr.is_signature_valid
    assert list(csr.subject) == []
    assert len(csr.extensions) == 1
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # RFC 5280: critical when the subject is empty
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    assert list(san.value) == [x509.UniformResourceIdentifier(SPIFFE)]
    assert csr.public_key() == key.public_key()


def test_csr_without_an_identity_has_no_extensions() -> None:
    csr = x509.load_pem_x509_csr(make_key_and_csr(None).csr_pem.encode())
    assert list(csr.subject) == []
    assert len(csr.extensions) == 0


def test_the_key_helper_process_makes_a_fresh_key_each_time() -> None:
    async def main() -> list[Any]:
        return [await new_key_and_csr(parse_spiffe_id(SPIFFE)) for _ in range(2)]

    first, second = trio.run(main)
    assert first.key_pem != second.key_pem
    for made in (first, second):
        csr = x509.load_pem_x509_csr(made.csr_pem.encode())
        assert csr.is_signature_valid
        assert public_key_der(csr.public_key()) == made.public_key_der
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]


def test_a_failing_key_helper_says_what_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # A python that cannot run the helper module: the error names the package to install.
    monkeypatch.setattr("sys.executable", "/bin/false")
    with pytest.raises(KeygenError, match=r"exit 1.*'cryptography' package"):
        trio.run(new_key_and_csr, None)
    with pytest.raises(ValueError, match="unreadable answer"):
        decode(b'{"key": "k"}')


# --- the schedule -----------------------------------------------------------------------------


def test_renewal_happens_at_half_life_plus_or_minus_ten_percent() -> None:
    rng = random.Random(7)
    fractions = [renewal_fraction(rng) for _ in range(20_000)]
    assert min(fractions) >= 0.45
    assert max(fractions) <= 0.55
    assert min(fractions) < 0.455
    assert max(fractions) > 0.545  # the whole band is used: no lockstep
    assert abs(sum(fractions) / len(fractions) - 0.5) < 0.002
    assert renewal_time(1000.0, 1000.0 + DAY, 0.5) == 1000.0 + DAY / 2
    assert renewal_time(1000.0, 1000.0 + DAY, 0.45) == pytest.approx(1000.0 + 0.45 * DAY)
    assert renewal_time(5.0, 3.0, 0.5) == 5.0  # a nonsensical certificate: renew at once
    # Counted from receipt: 20 s left means renewal in 10 s, however backdated notBefore is.
    assert renewal_time(100.0, 120.0, 0.5) == 110.0
    # Never within the first second (no hot loop on certificates about to expire)...
    assert renewal_time(100.0, 101.5, 0.5) == 101.0
    # ...unless the certificate expires sooner than that.
    assert renewal_time(100.0, 100.5, 0.5) == 100.5


def test_expiry_levels_of_a_day_long_certificate() -> None:
    start, end = 0.0, DAY
    assert expiry_level(0.0, start, end) == "ok"
    assert expiry_level(0.75 * DAY - 1, start, end) == "ok"
    assert expiry_level(0.75 * DAY, start, end) == "low"  # 25 % of its lifetime left
    assert expiry_level(DAY - 301, start, end) == "low"
    assert expiry_level(DAY - 300, start, end) == "critical"  # 5 minutes left
    assert expiry_level(DAY, start, end) == "expired"
    assert expiry_level(DAY + 1, start, end) == "expired"


def test_expiry_levels_of_a_short_certificate_keep_their_order() -> None:
    # 20 minutes: 5 minutes would be before the 25 % mark; 5 % of the lifetime is used.
    start, end = 0.0, 1200.0
    assert expiry_level(900.0, start, end) == "low"
    assert expiry_level(1139.0, start, end) == "low"
    assert expiry_level(1140.0, start, end) == "critical"


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = time.time()
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("", now) is None
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("100000", now) == 300.0  # capped
    later = datetime.datetime.fromtimestamp(now + 30, datetime.UTC)
    assert retry_after_seconds(format_datetime(later, usegmt=True), now) == pytest.approx(
        30, abs=1.5
    )
    assert retry_after_seconds("soon", now) is None


# --- the state file ---------------------------------------------------------------------------


def saved_identity(ca: TestCa | None = None) -> SavedIdentity:
    ca = ca or TestCa(intermediate=True)
    key = generate_key()
    leaf = ca.issue(key.public_key())
    return SavedIdentity(
        key_pem=key_pem(key),
        cert_pem=pem(leaf),
        chain_pem=ca.chain_pem,
        roots=(ca.root_pem,),
        trust_domain="cluster.local",
    )


def test_state_file_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    saved = saved_identity()
    os.umask(0o022)
    save_state(tmp_path, saved)
    path = tmp_path / STATE_FILE
    assert mode(path) == 0o600
    assert read_state(tmp_path) == saved
    assert "PRIVATE KEY" not in repr(saved)
    # Replaced atomically: no temp files are left, the new content is whole.
    newer = saved_identity()
    save_state(tmp_path, newer)
    assert read_state(tmp_path) == newer
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


def test_leftover_temp_files_of_a_crash_are_removed(tmp_path: Path) -> None:
    save_state(tmp_path, saved_identity())
    stale = tmp_path / f".{STATE_FILE}.abc123.tmp"
    stale.write_text("half a key")
    assert read_state(tmp_path) is not None
    assert not stale.exists()


def _rsa_key() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import rsa

    doc = json.loads(encode_state(saved_identity()))
    doc["key"] = key_pem(rsa.generate_private_key(65537, 2048))  # type: ignore[arg-type]
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not JSON"),
        (b'{"schema": 1, "key": "-----BEGIN', "not JSON"),  # torn
        (b"[]", "not a JSON object"),
        (b'{"schema": 99}', "schema 99"),
        (b'{"schema": 1, "key": 5}', "'key'"),
        (b'{"schema": 1, "key": "k", "certificate": "c", "chain": "", "roots": "r"}', "'roots'"),
        (_rsa_key(), "not an unencrypted PKCS#8 EC P-256 key"),
    ],
)
def test_a_corrupt_state_file_is_ignored_with_a_log_line(
    tmp_path: Path, content: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(ValueError, match=reason):
        decode_state(content)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert read_state(tmp_path) is None
    assert messages(caplog.records, "ignoring the saved certificate")


# --- the manager against a fake CA ----------------------------------------------------------


T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


def test_first_certificate_with_the_join_token(tmp_path: Path) -> None:
    ca = TestCa(intermediate=True)
    fake = FakeMeshdCa(ca)
    manager = make_manager(tmp_path, fake)

    async def main() -> Identity:
        return await manager.obtain()

    identity = run(main)
    assert manager.current.value is identity
    assert fake.roots_requests == 1  # to learn the trust domain for the CSR
    assert fake.authorizations == [f"Bearer {TOKEN}"]
    body = fake.signs[0]
    assert body["proxy"] == PROXY
    csr = x509.load_pem_x509_csr(body["csr"].encode())
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    assert str(identity.spiffe_id) == SPIFFE
    assert identity.source == "meshd"
    assert identity.roots == (ca.root_pem,)
    assert identity.trust_bundle == bundle_digest([ca.root_pem])
    assert identity.chain_pem == ca.chain_pem
    assert identity.not_after > identity.not_before
    leaf = x509.load_pem_x509_certificate(identity.cert_pem.encode())
    assert identity.serial == f"{leaf.serial_number:x}"
    # The key lives in memory and in private files only.
    state = tmp_path / STATE_FILE
    material = tmp_path / MATERIAL_DIR
    assert mode(state) == 0o600
    assert mode(material) == 0o700
    assert mode(material / CREDENTIALS_FILE) == 0o600
    assert sorted(p.name for p in material.iterdir()) == [CREDENTIALS_FILE]
    saved = read_state(tmp_path)
    assert saved is not None
    assert saved.cert_pem == identity.cert_pem
    assert "PRIVATE KEY" not in repr(identity)
    assert manager.trust_domain == "cluster.local"


def test_a_known_trust_domain_skips_the_roots_request(tmp_path: Path) -> None:
    fake = FakeMeshdCa(TestCa())
    manager = make_manager(tmp_path, fake, trust_domain="cluster.local")
    run(manager.obtain)
    assert fake.roots_requests == 0


def test_without_the_roots_endpoint_the_csr_carries_no_san(tmp_path: Path) -> None:
    fake = FakeMeshdCa(TestCa(), roots_script=[problem(404, "not found")])
    manager = make_manager(tmp_path, fake)
    identity = run(manager.obtain)
    csr = x509.load_pem_x509_csr(fake.signs[0]["csr"].encode())
    assert len(csr.extensions) == 0
    assert str(identity.spiffe_id) == SPIFFE  # learned from the certificate
    assert manager.trust_domain == "cluster.local"


def test_first_certificate_is_retried_while_meshd_is_unavailable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeMeshdCa(
        TestCa(),
        script=[
            refused(),
            refused(),
            problem(503, "ca-unavailable: the CA backend is down"),
            problem(503, "ca-unavailable: the CA backend is down"),
            problem(429, "too many requests", **{"Retry-After": "0"}),
            HttpResponse.of(200, body=b"not json"),
        ],
    )
    manager = make_manager(tmp_path, fake, trust_domain="cluster.local")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        identity = run(manager.obtain)
    assert len(fake.signs) == 7
    assert str(identity.spiffe_id) == SPIFFE
    failures = messages(caplog.records, "getting the first certificate failed")
    # One line per new kind of failure, not one per retry.
    assert len(failures) == 4, failures
    assert "Connection refused" in failures[0]
    assert "ca-unavailable" in failures[1]
    assert "429" in failures[2]
    assert len(messages(caplog.records, "certificate obtained for")) == 1


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    fake = FakeMeshdCa(TestCa(), script=[problem(429, "slow down", **{"Retry-After": "1"})])
    manager = make_manager(tmp_path, fake, trust_domain="cluster.local")
    started = time.monotonic()
    run(manager.obtain)
    assert time.monotonic() - started >= 1.0
    assert len(fake.signs) == 2


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_join_token_is_fatal_and_says_how_to_get_a_new_one(
    tmp_path: Path, status: int
) -> None:
    fake = FakeMeshdCa(TestCa(), script=[problem(status, "the join token was revoked")])
    manager = make_manager(tmp_path, fake, trust_domain="cluster.local")
    with pytest.raises(JoinTokenRejected) as caught:
        run(manager.obtain)
    message = str(caught.value)
    assert "the join token was revoked" in message
    assert "meshctl token create --service reviews --namespace default" in message
    assert caught.value.status == status
    assert manager.current.value is None
    assert len(fake.signs) == 1  # not retried


def test_a_rejected_csr_is_fatal(tmp_path: Path) -> None:
    fake = FakeMeshdCa(TestCa(), script=[problem(400, "csr-rejected: CA:true is not allowed")])
    manager = make_manager(tmp_path, fake, trust_domain="cluster.local")
    with pytest.raises(SigningRejected, match="CA:true is not allowed") as caught:
        run(manager.obtain)
    assert not isinstance(caught.value, JoinTokenRejected)


def _other_key(answer: dict[str, Any]) -> dict[str, Any]:
    leaf = TestCa().issue(generate_key().public_key())
    return answer | {"certificate": pem(leaf)}


def _foreign_roots(answer: dict[str, Any]) -> dict[str, Any]:
    return answer | {"roots": [TestCa().root_pem]}


def _claims_other(answer: dict[str, Any]) -> dict[str, Any]:
    return answer | {"spiffeId": "spiffe://cluster.local/ns/default/sa/other"}


def _no_roots(answer: dict[str, Any]) -> dict[str, Any]:
    return answer | {"roots": []}


@pytest.mark.parametrize(
    ("tamper", "spiffe", "reason"),
    [
        (_other_key, SPIFFE, "not for the key of our CSR"),
        (_foreign_roots, SPIFFE, "does not chain to any of the trust roots"),
        (_claims_other, SPIFFE, "the answer says"),
        (_no_roots, SPIFFE, "'roots' must be a non-empty list"),
        (None, "spiffe://cluster.local/ns/default/sa/ratings", "not for namespace default"),
        (None, "spiffe://other.domain/ns/default/sa/reviews", "trust domain other.domain"),
        (None, "", "no SPIFFE ID"),
    ],
)
def test_an_unusable_certificate_is_never_installed(
    tmp_path: Path, tamper: Any, spiffe: str, reason: str
) -> None:
    fake = FakeMeshdCa(TestCa(intermediate=True), tamper=tamper, spiffe=spiffe)
    manager = make_manager(tmp_path, fake, trust_domain="cluster.local")
    with pytest.raises(SigningUnavailable, match=reason):
        run(manager.renew_now)  # one attempt (obtain() would retry)
    assert manager.current.value is None
    assert not (tmp_path / STATE_FILE).exists()


def test_a_certificate_that_starts_in_the_future_of_our_clock_is_taken(tmp_path: Path) -> None:
    # This host's clock runs 5 minutes behind meshd's: the chain is checked, not dates.
    fake = FakeMeshdCa(TestCa(intermediate=True), backdate=datetime.timedelta(minutes=-5))
    manager = make_manager(tmp_path, fake, trust_domain="cluster.local")
    identity = run(manager.renew_now)
    assert identity.not_before.timestamp() > time.time() + 240
    assert manager.current.value is identity


def test_renewal_authenticates_with_the_certificate_not_the_token(tmp_path: Path) -> None:
    fake = FakeMeshdCa(TestCa(intermediate=True))
    manager = make_manager(tmp_path, fake)

    async def main() -> tuple[Identity, Identity]:
        first = await manager.obtain()
        second = await manager.renew_now()
        return first, second

    first, second = run(main)
    assert fake.authorizations == [f"Bearer {TOKEN}", None]
    assert second.serial != first.serial
    assert second.generation > first.generation
    assert second.server_context is not first.server_context
    assert second.client_context is not first.client_context
    assert second.control_context is not first.control_context
    assert manager.renewals_total == 1
    assert manager.current.value is second
    csr_keys = {
        public_key_der(x509.load_pem_x509_csr(s["csr"].encode()).public_key()) for s in fake.signs
    }
    assert len(csr_keys) == 2  # a new key for every certificate
    saved = read_state(tmp_path)
    assert saved is not None
    assert saved.cert_pem == second.cert_pem


def test_renewal_over_plain_http_sends_the_join_token(tmp_path: Path) -> None:
    fake = FakeMeshdCa(TestCa())
    manager = make_manager(tmp_path, fake, meshd_url="http://127.0.0.1:15012")

    async def main() -> None:
        await manager.obtain()
        await manager.renew_now()

    run(main)
    assert fake.authorizations == [f"Bearer {TOKEN}", f"Bearer {TOKEN}"]


def test_a_certificate_meshd_refuses_falls_back_to_the_join_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeMeshdCa(TestCa())
    manager = make_manager(tmp_path, fake)

    async def main() -> None:
        first = await manager.obtain()
        fake.script = [problem(403, "this certificate was revoked")]
        await manager._renew_until_done(first.serial)
        await manager.renew_now()  # mTLS again once a certificate was accepted
        fake.script = [problem(403, "this certificate was revoked")]
        with pytest.raises(CertificateNotAccepted):
            await manager.renew_now()
        await manager.renew_now()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        run(main)
    assert fake.authorizations == [
        f"Bearer {TOKEN}",
        None,
        f"Bearer {TOKEN}",
        None,
        None,
        f"Bearer {TOKEN}",
    ]
    refusals = [r for r in caplog.records if "renewal failed" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.ERROR]
    assert messages(caplog.records, "succeeded after 1 failed attempt")


def test_a_saved_certificate_serves_while_meshd_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeMeshdCa(TestCa(intermediate=True))
    first = run(make_manager(tmp_path, fake).obtain)
    fake.down = True
    restarted = make_manager(tmp_path, fake)

    async def main() -> Identity:
        async with trio.open_nursery() as nursery:
            identity: Identity = await nursery.start(restarted.run)
            nursery.cancel_scope.cancel()
        return identity

    with caplog.at_level(logging.INFO, logger=LOGGER):
        identity = run(main)
    assert identity.source == "saved"
    assert identity.serial == first.serial
    assert identity.roots == first.roots
    assert restarted.trust_domain == "cluster.local"
    assert messages(caplog.records, "serving the saved certificate for " + SPIFFE)


def test_an_expired_saved_certificate_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeMeshdCa(TestCa(), lifetime=datetime.timedelta(seconds=30))
    run(make_manager(tmp_path, fake).obtain)
    later = make_manager(tmp_path, fake, clock=lambda: time.time() + 60)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert run(later.load_saved) is None
    (line,) = messages(caplog.records, "expired at")
    assert "single-use" in line
    assert "meshctl token create --service reviews --namespace default" in line
    assert not (tmp_path / STATE_FILE).exists()
    assert not (tmp_path / MATERIAL_DIR / CREDENTIALS_FILE).exists()


def test_a_saved_certificate_of_another_identity_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run(make_manager(tmp_path, FakeMeshdCa(TestCa())).obtain)
    other = make_manager(tmp_path, FakeMeshdCa(TestCa()), service="ratings")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert run(other.load_saved) is None
    assert messages(caplog.records, "discarding the saved certificate")
    assert not (tmp_path / STATE_FILE).exists()


def test_a_saved_key_that_is_not_the_certificates_is_not_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The state file reads, but OpenSSL refuses the pair when the contexts are built.
    run(make_manager(tmp_path, FakeMeshdCa(TestCa())).obtain)
    path = tmp_path / STATE_FILE
    doc = json.loads(path.read_bytes())
    doc["key"] = key_pem(generate_key())
    path.write_text(json.dumps(doc))
    later = make_manager(tmp_path, FakeMeshdCa(TestCa()))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert run(later.load_saved) is None
    (line,) = messages(caplog.records, "cannot use the saved certificate")
    assert "requesting a new one" in line
    assert later.current.value is None


def test_renewal_runs_at_half_life_with_jitter(tmp_path: Path) -> None:
    # Like meshd's: notBefore a minute back, 4 s left. Half-life counts from receipt.
    fake = FakeMeshdCa(
        TestCa(), lifetime=datetime.timedelta(seconds=4), backdate=datetime.timedelta(minutes=1)
    )
    manager = make_manager(tmp_path, fake, trust_domain="cluster.local")

    async def main() -> tuple[float, Identity]:
        async with trio.open_nursery() as nursery:
            first: Identity = await nursery.start(manager.run)
            due = manager.renewal_at(first)
            with trio.fail_after(10):
                while manager.current.value is first:
                    await manager.current.wait_newer(manager.current.version)
            nursery.cancel_scope.cancel()
        return due, first

    due, first = run(main)
    start, end = first.issued_at.timestamp(), first.not_after.timestamp()
    assert first.not_before.timestamp() < start - 59
    assert 3 < end - start <= 4
    assert start + 0.45 * (end - start) <= due <= start + 0.55 * (end - start)
    assert len(fake.sign_times) == 2
    assert due - 0.05 <= fake.sign_times[1] <= due + 1.0
    assert fake.sign_times[1] < end


def test_meshd_down_keeps_the_certificate_and_warns_once_per_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 4 s certificate: renewal due at ~2 s, "low" at 3 s, "critical" at 3.8 s, expiry at 4 s.
    fake = FakeMeshdCa(
        TestCa(), lifetime=datetime.timedelta(seconds=4), backdate=datetime.timedelta(minutes=1)
    )
    manager = make_manager(tmp_path, fake, trust_domain="cluster.local")
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first: Identity = await nursery.start(manager.run)
            fake.down = True
            await trio.sleep_until(
                trio.current_time() + first.seconds_to_expiry() - 0.4
            )  # 0.4 s left: critical
            seen["remaining"] = manager.seconds_to_expiry()
            seen["metrics"] = manager.prometheus_lines()
            seen["still"] = manager.current.value is first
            await trio.sleep(0.6)  # expired
            seen["expired"] = manager.seconds_to_expiry()
            fake.down = False  # meshd is back: the expired certificate needs the token
            with trio.fail_after(5):
                while manager.current.value is first:
                    await manager.current.wait_newer(manager.current.version)
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        run(main)
    assert seen["still"]
    assert 0 < seen["remaining"] < 0.6
    assert seen["expired"] < 0
    assert any(
        line.startswith("mesh_sidecar_certificate_expiry_seconds ") for line in seen["metrics"]
    )
    assert manager.renewal_failures_total > 5  # retried with backoff all along...
    assert len(messages(caplog.records, "certificate renewal failed")) == 1  # ...logged once
    soon = [r for r in caplog.records if "CERTIFICATE EXPIRES SOON" in r.getMessage()]
    assert [r.levelno for r in soon] == [logging.WARNING, logging.WARNING]  # low, critical
    assert "meshd at https://meshd.test:15012" in soon[0].getMessage()
    expired = messages(caplog.records, "CERTIFICATE EXPIRED")
    assert len(expired) == 1
    assert fake.authorizations[0] == fake.authorizations[-1] == f"Bearer {TOKEN}"
    assert fake.authorizations[1] is None  # while valid: the certificate
    assert messages(caplog.records, "renewal succeeded after")
    assert manager.last_error is None
    renewed = manager.current.value
    assert renewed is not None
    assert renewed.seconds_to_expiry() > 0


def test_roots_update_rebuilds_the_contexts_only_when_the_set_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = TestCa("old root"), TestCa("new root")
    manager = make_manager(tmp_path, FakeMeshdCa(old))

    async def main() -> None:
        first = await manager.obtain()
        assert not await manager.update_roots([old.root_pem])
        assert not await manager.update_roots([])
        assert manager.current.value is first
        assert await manager.update_roots([old.root_pem, new.root_pem, new.root_pem])
        both = manager.current.value
        assert both is not None
        assert both is not first
        assert both.serial == first.serial
        assert both.generation == first.generation + 1
        assert both.roots == (old.root_pem, new.root_pem)
        assert both.trust_bundle == bundle_digest([new.root_pem, old.root_pem])
        assert both.server_context is not first.server_context
        assert not await manager.update_roots([new.root_pem, old.root_pem])  # same set
        saved = read_state(tmp_path)
        assert saved is not None
        assert saved.roots == (old.root_pem, new.root_pem)
        with pytest.raises(IdentityError, match="not a PEM certificate"):
            await manager.update_roots(["garbage"])
        assert manager.current.value is both
        # Roots from snapshots win over the roots meshd sends with a certificate.
        renewed = await manager.renew_now()
        assert renewed.roots == (old.root_pem, new.root_pem)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        run(main)
    assert len(messages(caplog.records, "trust roots changed")) == 1


def test_stats_and_metrics(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, FakeMeshdCa(TestCa()))
    empty = manager.stats()
    assert empty.spiffe_id is None
    assert empty.seconds_to_expiry is None
    assert not [m for m in manager.prometheus_lines() if "expiry_seconds " in m]
    identity = run(manager.obtain)
    stats = manager.stats()
    assert stats.spiffe_id == SPIFFE
    assert stats.serial == identity.serial
    assert stats.roots == 1
    assert stats.seconds_to_expiry is not None
    assert 3500 < stats.seconds_to_expiry <= 3600
    lines = manager.prometheus_lines()
    assert "mesh_sidecar_certificate_renewals_total 0" in lines
    assert "# TYPE mesh_sidecar_certificate_expiry_seconds gauge" in lines


def test_no_certificate_yet_is_an_error_for_listeners(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, FakeMeshdCa(TestCa()))

    async def main() -> None:
        left, _right = trio.testing.memory_stream_pair()
        with pytest.raises(IdentityError, match="no certificate yet"):
            manager.server_stream(left)

    import trio.testing

    run(main)


def test_a_renewal_that_shortens_the_certificate_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeMeshdCa(TestCa())
    manager = make_manager(tmp_path, fake)

    async def main() -> None:
        await manager.obtain()
        await manager.renew_now()  # as long as the last one: fine
        fake.lifetime = datetime.timedelta(minutes=10)  # e.g. capped by an expiring CA
        await manager.renew_now()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        run(main)
    (line,) = messages(caplog.records, "less than the previous one")
    assert "valid for only 10.0 min" in line
