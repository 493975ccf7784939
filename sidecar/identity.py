"""The sidecar's workload identity: its key, its certificate from meshd, renewal, and the
TLS contexts built on them.

The sidecar makes an EC P-256 key in memory and sends meshd a CSR
(``POST /v1/ca/sign``): the first certificate is authenticated by the join token
(``--token``), renewals by the current certificate over mTLS. It renews at half-life
(+-10 % jitter), retries with jittered exponential backoff, and while meshd cannot be
reached keeps using the certificate it holds, with one loud log line when less than a
quarter of its lifetime is left and another when less than 5 minutes are. The key,
certificate, chain and roots are saved to ``<state-dir>/identity.json`` (0600), so a
sidecar restarted while meshd is down serves until its certificate expires.

Contract for listeners and connection pools (the proxy)
-------------------------------------------------------

``IdentityManager.current`` is a :class:`registry.latest.Latest` of the current
:class:`Identity` (None until the first certificate)::

    identity = manager.current.value            # for EACH new connection
    stream = trio.SSLStream(tcp, identity.server_context, server_side=True)
    # or: stream = manager.server_stream(tcp) / manager.client_stream(tcp)
    await stream.do_handshake()
    peer = peer_spiffe_id(stream)                # verified peer's SPIFFE ID, or None

1. An :class:`Identity` is immutable and so are its contexts. A renewal or a change of
   the trust roots publishes a NEW Identity with NEW ``ssl.SSLContext`` objects; a
   published context is never modified.
2. Listeners and pools take ``manager.current.value`` for each new connection (accept
   or connect) and never cache a context. A connection keeps the context it was
   made with for its whole life: a renewal or a root change drops nothing and
   re-handshakes nothing; old connections end when either side closes them.
3. Nothing in the contexts checks *which* workload the peer is: verification only
   proves it holds a certificate from the mesh. After the handshake, compare
   :func:`peer_spiffe_id` with what was expected (:func:`check_peer` does it).
4. An upstream pool should not reuse a connection after the ``not_after`` of the
   identity it was made with (the peer's certificate may be as old as ours).
5. ``server_context`` requires a client certificate: PERMISSIVE mode (plaintext
   detection by the first byte) happens before the TLS wrap, in the proxy.

Control plane: ``manager.control_plane_context()`` is the context for HTTPS to meshd:
it verifies meshd's certificate against the mesh roots (and the CA file) with the
hostname check on, and presents the current certificate once there is one. It too
is replaced, never changed: take ``manager.control_plane_context()`` for each request
(as :class:`sidecar.control_client.ControlClient` does), or again whenever ``current``
changes (``await manager.current.wait_newer(version)``).

Roots: call ``await manager.update_roots(snapshot.trust_roots)`` for every snapshot
applied (a no-op unless the set of roots changed): during a root rotation they hold
both the old and the new root, and the contexts are rebuilt with them *before* the
snapshot is ACKed, so meshd switches signing only once every peer trusts the new root.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import trio

from meshd.spiffe import SpiffeId, spiffe_id
from registry.latest import Latest
from sidecar import __version__, http_client
from sidecar.control_client import Backoff
from sidecar.errors import HttpClientError, SidecarError, StateError
from sidecar.http_client import HttpResponse, Send, build_request
from sidecar.identity_state import SavedIdentity, discard_state, read_state, save_state
from sidecar.keygen import KeygenError, new_key_and_csr
from sidecar.settings import Settings
from sidecar.tls_contexts import (
    DEFAULT_ALPN,
    PeerCertSource,
    TlsContexts,
    build_contexts,
    bundle_digest,
    control_plane_context,
    normalize_roots,
    peer_spiffe_id,
    remove_material,
)
from sidecar.x509_reader import cert_facts, der_to_pem, pem_certificates

__all__ = [
    "CertificateNotAccepted",
    "Identity",
    "IdentityError",
    "IdentityManager",
    "IdentityStats",
    "JoinTokenRejected",
    "PeerIdentityMismatch",
    "SigningRejected",
    "SigningUnavailable",
    "check_peer",
    "expiry_level",
    "peer_spiffe_id",
    "renewal_fraction",
    "renewal_time",
]

log = logging.getLogger("sidecar.identity")

SIGN_PATH = "/v1/ca/sign"
ROOTS_PATH = "/v1/ca/roots"
USER_AGENT = f"mesh-sidecar/{__version__}"
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 15.0

RENEW_AT = 0.5
"""Renew at this fraction of the certificate's lifetime (half-life)..."""
RENEW_JITTER = 0.1
"""...+- this fraction of it: between 45 % and 55 % of the lifetime."""
LOW_REMAINING = 0.25
"""Warn once when less than this fraction of the lifetime is left and renewal fails."""
CRITICAL_REMAINING_S = 300.0
"""Warn again when less than this is left (or 5 % of the lifetime, if that is shorter)."""
MAX_RETRY_AFTER_S = 300.0
MIN_RENEWAL_GAP_S = 1.0
"""Never renew one certificate sooner than this after getting it (no hot loop when meshd
hands out certificates that are about to expire, e.g. capped by an expiring CA)."""

ExpiryLevel = Literal["ok", "low", "critical", "expired"]
_LEVELS: tuple[ExpiryLevel, ...] = ("ok", "low", "critical", "expired")


# --- errors ---------------------------------------------------------------------------------


class IdentityError(SidecarError):
    """The sidecar has no usable certificate, or could not get one."""


class SigningUnavailable(IdentityError):
    """meshd could not sign right now (unreachable, 5xx, 429, an unusable answer): retry
    with backoff. ``retry_after`` is meshd's Retry-After in seconds, when it sent one."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class SigningRejected(IdentityError):
    """meshd refused to sign (a 4xx other than 429): retrying the same request will not
    help. ``status`` is the HTTP status, ``detail`` meshd's reason."""

    def __init__(self, message: str, *, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class JoinTokenRejected(SigningRejected):
    """The join token was refused (401/403: wrong, expired, revoked, used up, or for
    another identity). Fatal for the first certificate: a new join token is needed."""


class CertificateNotAccepted(SigningRejected):
    """meshd refused to renew with our current certificate (401/403)."""


class PeerIdentityMismatch(IdentityError):
    """The peer of a TLS connection is not the workload that was expected."""

    def __init__(self, message: str, *, actual: SpiffeId | None) -> None:
        super().__init__(message)
        self.actual = actual


# --- the schedule (pure) ------------------------------------------------------------------


def renewal_fraction(rng: random.Random) -> float:
    """Where in its lifetime a certificate is renewed: 0.5 +- 10 % (0.45 to 0.55), drawn
    once per certificate so that a fleet does not renew in lockstep."""
    return RENEW_AT * (1.0 + rng.uniform(-RENEW_JITTER, RENEW_JITTER))


def renewal_time(issued_at: float, not_after: float, fraction: float) -> float:
    """The Unix time to renew a certificate received at ``issued_at`` and valid until
    ``not_after``: at ``fraction`` of the time between, and not within the first
    second. Counted from receipt, not from ``notBefore``, which CAs backdate to allow
    for clock skew (meshd by a minute: with short certificates that would be most of
    the "lifetime")."""
    due = issued_at + max(0.0, not_after - issued_at) * fraction
    return max(due, min(issued_at + MIN_RENEWAL_GAP_S, not_after))


def critical_remaining_s(lifetime_s: float) -> float:
    return min(CRITICAL_REMAINING_S, 0.05 * lifetime_s)


def expiry_thresholds(issued_at: float, not_after: float) -> tuple[tuple[float, ExpiryLevel], ...]:
    """The Unix times at which a certificate enters each warning level, in order; its
    lifetime counts from ``issued_at`` (see :func:`renewal_time`)."""
    lifetime = max(0.0, not_after - issued_at)
    return (
        (not_after - LOW_REMAINING * lifetime, "low"),
        (not_after - critical_remaining_s(lifetime), "critical"),
        (not_after, "expired"),
    )


def expiry_level(now: float, issued_at: float, not_after: float) -> ExpiryLevel:
    """``ok``; ``low`` when less than 25 % of the lifetime is left; ``critical`` when less
    than 5 minutes (or 5 % of a lifetime shorter than 100 minutes); ``expired``."""
    level: ExpiryLevel = "ok"
    for at, name in expiry_thresholds(issued_at, not_after):
        if now >= at:
            level = name
    return level


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from ``now``."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)


# --- the identity ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Identity:
    """One certificate with one set of trust roots, and the contexts built on them.
    ``issued_at`` is when this sidecar got the certificate (``not_before`` is usually
    backdated); renewal and warnings count from it. ``generation`` grows with every
    identity published (renewals and root changes); ``source`` is ``saved`` for a
    certificate loaded from the state dir."""

    spiffe_id: SpiffeId
    serial: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    trust_bundle: str
    generation: int
    source: Literal["meshd", "saved"]
    cert_pem: str = field(repr=False)
    chain_pem: str = field(repr=False)
    roots: tuple[str, ...] = field(repr=False)
    server_context: ssl.SSLContext = field(repr=False)
    client_context: ssl.SSLContext = field(repr=False)
    control_context: ssl.SSLContext = field(repr=False)

    @property
    def lifetime_s(self) -> float:
        """From ``issued_at`` to ``not_after``."""
        return (self.not_after - self.issued_at).total_seconds()

    def seconds_to_expiry(self, now: float | None = None) -> float:
        return self.not_after.timestamp() - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.seconds_to_expiry(now) <= 0


@dataclass(frozen=True, slots=True)
class IdentityStats:
    """What the admin port shows. ``seconds_to_expiry`` is None without a certificate."""

    spiffe_id: str | None
    serial: str | None
    not_after: datetime | None
    seconds_to_expiry: float | None
    trust_bundle: str
    roots: int
    renewals_total: int
    renewal_failures_total: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class _Issued:
    """A certificate meshd signed, checked against our key and identity."""

    cert_pem: str
    chain_pem: str
    roots: tuple[str, ...]
    spiffe_id: SpiffeId
    issued_at: float


def check_peer(conn: PeerCertSource, expected: Collection[SpiffeId | str]) -> SpiffeId:
    """The peer's SPIFFE ID if it is one of ``expected`` (SpiffeIds or ``spiffe://``
    strings); raises :class:`PeerIdentityMismatch` otherwise."""
    actual = peer_spiffe_id(conn)
    wanted = {str(e) for e in expected}
    if actual is None or str(actual) not in wanted:
        shown = str(actual) if actual is not None else "no SPIFFE ID"
        raise PeerIdentityMismatch(
            f"the peer is {shown}, expected {' or '.join(sorted(wanted)) or 'nobody'}",
            actual=actual,
        )
    return actual


# --- the manager ----------------------------------------------------------------------------


def _default_backoff() -> Backoff:
    return Backoff(initial=1.0, maximum=30.0)


class _FailureLog:
    """Log a failure when it is new (first one, or a different kind), not every retry."""

    def __init__(self) -> None:
        self.count = 0
        self._kind: tuple[type[BaseException], int | None] | None = None

    def failed(self, exc: IdentityError, what: str, meanwhile: str) -> None:
        kind = (type(exc), getattr(exc, "status", None))
        self.count += 1
        if kind != self._kind:
            # Refusals need the operator (ERROR); unavailability usually passes (WARNING).
            level = logging.ERROR if isinstance(exc, SigningRejected) else logging.WARNING
            log.log(level, "%s failed: %s; %s; retrying with backoff", what, exc, meanwhile)
        self._kind = kind

    def reset(self) -> int:
        count, self.count, self._kind = self.count, 0, None
        return count


class IdentityManager:
    """Gets, keeps and renews one workload's certificate; publishes it in
    :attr:`current`. Drive :meth:`run` in a nursery (``await nursery.start(m.run)``
    returns once there is a certificate); see the module docstring for the contract.

    ``ca_file`` holds the CA(s) meshd's HTTPS certificate chains to, for the first
    request (afterwards the mesh roots are trusted too). ``trust_domain`` is optional:
    when unknown it is read from ``GET /v1/ca/roots`` before the first CSR.
    ``send`` (a fake meshd), ``clock``, ``rng`` and ``backoff`` are for tests.
    """

    def __init__(
        self,
        *,
        meshd_url: str,
        join_token: str,
        proxy_id: str,
        service: str,
        namespace: str,
        state_dir: Path,
        service_account: str = "",
        ca_file: Path | None = None,
        trust_domain: str = "",
        alpn: Sequence[str] = DEFAULT_ALPN,
        send: Send | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        backoff: Callable[[], Backoff] = _default_backoff,
    ) -> None:
        self.meshd_url = meshd_url.rstrip("/")
        self.join_token = join_token
        self.proxy_id = proxy_id
        self.service = service
        self.namespace = namespace
        self.service_account = service_account or service
        self.state_dir = state_dir
        self.ca_file = ca_file
        self.alpn = tuple(alpn)
        self.current: Latest[Identity | None] = Latest(None)
        self.renewals_total = 0
        self.renewal_failures_total = 0
        self.last_error: str | None = None
        self._trust_domain = trust_domain
        self._https = urlsplit(self.meshd_url).scheme == "https"
        self._send = send or http_client.send
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 — jitter, not secrets
        self._new_backoff = backoff
        self._key_pem = ""
        self._roots: tuple[str, ...] = ()
        self._roots_from_snapshot = False
        self._generation = 0
        self._renew_plan: tuple[str, float] | None = None
        self._warned: tuple[str, ExpiryLevel] = ("", "ok")
        self._failing_serial = ""
        self._prefer_token = False
        self._state_warned = False
        self._ca_file_warned = False
        self._sign_lock = trio.Lock()
        self._install_lock = trio.Lock()
        self._bootstrap: tuple[tuple[str, ...], ssl.SSLContext] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, proxy_id: str, *, ca_file: Path | None = None, **kwargs: Any
    ) -> IdentityManager:
        """The manager of ``mesh-sidecar run``: ``--meshd``, ``--token`` (the join token),
        ``--service``, ``--namespace``, ``--service-account``, ``--state-dir``."""
        return cls(
            meshd_url=settings.meshd_url,
            join_token=settings.token,
            proxy_id=proxy_id,
            service=settings.service,
            namespace=settings.namespace,
            service_account=settings.service_account,
            state_dir=settings.state_dir,
            ca_file=ca_file,
            **kwargs,
        )

    # --- what others read -----------------------------------------------------------------

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def roots(self) -> tuple[str, ...]:
        return self._roots

    def expected_spiffe_id(self) -> SpiffeId | None:
        """The identity this workload asks for; None while the trust domain is unknown."""
        if not self._trust_domain:
            return None
        return spiffe_id(self._trust_domain, self.namespace, self.service_account)

    def seconds_to_expiry(self) -> float | None:
        """Seconds until the current certificate expires (negative once it has); None
        without one. The admin port exports it as a gauge."""
        identity = self.current.value
        return None if identity is None else identity.seconds_to_expiry(self._clock())

    def stats(self) -> IdentityStats:
        identity = self.current.value
        return IdentityStats(
            spiffe_id=str(identity.spiffe_id) if identity else None,
            serial=identity.serial if identity else None,
            not_after=identity.not_after if identity else None,
            seconds_to_expiry=self.seconds_to_expiry(),
            trust_bundle=identity.trust_bundle if identity else "",
            roots=len(self._roots),
            renewals_total=self.renewals_total,
            renewal_failures_total=self.renewal_failures_total,
            last_error=self.last_error,
        )

    def prometheus_lines(self) -> list[str]:
        """Metric lines for ``/stats/prometheus`` (with their HELP and TYPE)."""
        out = [
            "# HELP mesh_sidecar_certificate_renewals_total Certificates renewed.",
            "# TYPE mesh_sidecar_certificate_renewals_total counter",
            f"mesh_sidecar_certificate_renewals_total {self.renewals_total}",
            "# HELP mesh_sidecar_certificate_renewal_failures_total Failed renewal attempts.",
            "# TYPE mesh_sidecar_certificate_renewal_failures_total counter",
            f"mesh_sidecar_certificate_renewal_failures_total {self.renewal_failures_total}",
        ]
        remaining = self.seconds_to_expiry()
        if remaining is not None:
            out += [
                "# HELP mesh_sidecar_certificate_expiry_seconds Seconds until the workload "
                "certificate expires.",
                "# TYPE mesh_sidecar_certificate_expiry_seconds gauge",
                f"mesh_sidecar_certificate_expiry_seconds {remaining:.0f}",
            ]
        return out

    def private_key_pem(self) -> str:
        """The current certificate's private key (PKCS#8 PEM; "" before the first one).
        Only for the sidecar's own worker processes (``--workers``), which get it over
        their private socketpair: it never goes anywhere else."""
        return self._key_pem

    def control_plane_context(self) -> ssl.SSLContext:
        """The context for HTTPS to meshd: the current identity's (mTLS) while it holds
        an unexpired certificate; before that, one that verifies meshd without
        presenting a certificate. A new object whenever the identity changes."""
        identity = self.current.value
        if identity is not None and not identity.expired(self._clock()):
            return identity.control_context
        return self._bootstrap_context()

    def server_stream(
        self, transport: trio.abc.Stream, *, https_compatible: bool = True
    ) -> trio.SSLStream[trio.abc.Stream]:
        """Wrap an accepted connection with the CURRENT server context (handshake on
        first use, or ``await stream.do_handshake()``)."""
        return trio.SSLStream(
            transport,
            self._require().server_context,
            server_side=True,
            https_compatible=https_compatible,
        )

    def client_stream(
        self, transport: trio.abc.Stream, *, https_compatible: bool = True
    ) -> trio.SSLStream[trio.abc.Stream]:
        """Wrap an outgoing connection to a peer sidecar with the CURRENT client
        context; after the handshake, :func:`check_peer` it."""
        return trio.SSLStream(
            transport,
            self._require().client_context,
            server_hostname=None,
            https_compatible=https_compatible,
        )

    def _require(self) -> Identity:
        identity = self.current.value
        if identity is None:
            raise IdentityError("this sidecar holds no certificate yet")
        return identity

    # --- the lifecycle -----------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Identity] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the saved certificate or obtain one (``started`` with it), then renew it
        until cancelled. Raises :class:`JoinTokenRejected` (or :class:`SigningRejected`)
        before ``started`` when no certificate can be had: the sidecar must stop."""
        if self.current.value is None:
            await self.load_saved()
        identity = self.current.value or await self.obtain()
        task_status.started(identity)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_expiry)
            await self._renewal_loop()

    async def load_saved(self) -> Identity | None:
        """Serve the certificate saved in the state dir, if it is still valid and this
        workload's; discard it otherwise (with a log line)."""
        try:
            saved = await trio.to_thread.run_sync(read_state, self.state_dir)
        except StateError as exc:
            log.warning("%s; requesting a new certificate", exc)
            return None
        if saved is None:
            return None
        facts = cert_facts(saved.cert_pem)  # read_state checked that it reads
        identity_in = facts.spiffe_id
        not_after = facts.not_after
        expected = (self.namespace, self.service_account)
        reason = ""
        if identity_in is None:
            reason = "it names no workload"
        elif (identity_in.namespace, identity_in.service_account) != expected:
            reason = (
                f"it is {identity_in}'s; this sidecar is namespace {self.namespace}, "
                f"service account {self.service_account}"
            )
        elif self._trust_domain and identity_in.trust_domain != self._trust_domain:
            reason = f"it is from trust domain {identity_in.trust_domain}, not {self._trust_domain}"
        if reason:
            log.warning("discarding the saved certificate: %s", reason)
            await trio.to_thread.run_sync(self._discard_saved)
            return None
        assert identity_in is not None
        if not_after.timestamp() <= self._clock():
            log.warning(
                "the saved certificate for %s expired at %s: discarded; a new one needs the "
                "join token (--token). If that token was single-use and is used up, create "
                "a new one: meshctl token create --service %s --namespace %s",
                identity_in,
                _iso(not_after),
                self.service,
                self.namespace,
            )
            await trio.to_thread.run_sync(self._discard_saved)
            return None
        self._trust_domain = self._trust_domain or identity_in.trust_domain
        try:
            roots = normalize_roots(saved.roots)
        except ValueError as exc:
            log.warning("ignoring the saved trust roots: %s", exc)
            roots = ()
        if not self._roots:
            self._roots = roots
        issued_at = saved.issued_at or facts.not_before.timestamp()
        issued = _Issued(saved.cert_pem, saved.chain_pem, self._roots, identity_in, issued_at)
        try:
            identity = await self._install(saved.key_pem, issued, source="saved", save=False)
        except IdentityError as exc:
            log.warning("cannot use the saved certificate (%s); requesting a new one", exc)
            return None
        log.info(
            "serving the saved certificate for %s (serial %s, valid until %s, %s left)",
            identity.spiffe_id,
            identity.serial,
            _iso(identity.not_after),
            _duration(identity.seconds_to_expiry(self._clock())),
        )
        return identity

    def _discard_saved(self) -> None:
        discard_state(self.state_dir)
        remove_material(self.state_dir)

    async def obtain(self) -> Identity:
        """The first certificate, with the join token: retried with backoff while meshd
        is unreachable or busy; raises :class:`JoinTokenRejected` when the token is
        refused and :class:`SigningRejected` when the CSR is."""
        backoff = self._new_backoff()
        failures = _FailureLog()
        while True:
            try:
                return await self._sign(renewal=False)
            except SigningUnavailable as exc:
                self.last_error = str(exc)
                failures.failed(exc, "getting the first certificate", "no certificate yet")
                await trio.sleep(_retry_delay(backoff, exc))

    async def renew_now(self) -> Identity:
        """Renew at once (one attempt; tests and the admin endpoint): the new identity,
        or the error. The renewal schedule follows the new certificate."""
        try:
            identity = await self._sign(renewal=True)
        except IdentityError as exc:
            self.renewal_failures_total += 1
            self.last_error = str(exc)
            raise
        return identity

    async def update_roots(self, roots: Sequence[str], trust_bundle: str = "") -> bool:
        """Trust exactly ``roots`` from now on (from a snapshot's ``trust_roots``; both
        old and new during a rotation). Rebuilds the contexts when the set of roots
        changed (True), does nothing otherwise or when ``roots`` is empty (False).
        Raises :class:`IdentityError` when a root is not a PEM certificate."""
        try:
            normalized = normalize_roots(roots)
        except ValueError as exc:
            raise IdentityError(f"refusing the new trust roots: {exc}") from exc
        if not normalized:
            return False
        self._roots_from_snapshot = True
        async with self._install_lock:
            if bundle_digest(normalized) == bundle_digest(self._roots):
                return False
            before = len(self._roots)
            current = self.current.value
            if current is not None:
                issued = _Issued(
                    current.cert_pem,
                    current.chain_pem,
                    normalized,
                    current.spiffe_id,
                    current.issued_at.timestamp(),
                )
                await self._build_and_publish(self._key_pem, issued, current.source, save=True)
            self._roots = normalized
        digest = trust_bundle or bundle_digest(normalized)
        log.info(
            "trust roots changed: %d root(s), was %d (bundle %s)", len(normalized), before, digest
        )
        return True

    # --- renewal ------------------------------------------------------------------------------

    def renewal_at(self, identity: Identity) -> float:
        """When ``identity``'s certificate is due for renewal (Unix time); the jitter is
        drawn once per certificate."""
        if self._renew_plan is None or self._renew_plan[0] != identity.serial:
            self._renew_plan = (identity.serial, renewal_fraction(self._rng))
        return renewal_time(
            identity.issued_at.timestamp(), identity.not_after.timestamp(), self._renew_plan[1]
        )

    async def _renewal_loop(self) -> None:
        while True:
            identity = self._require()
            version = self.current.version
            delay = self.renewal_at(identity) - self._clock()
            with trio.move_on_after(max(0.0, delay)):
                await self._wait_for_new_serial(identity.serial, version)
                continue  # renewed meanwhile (renew_now): follow the new certificate
            await self._renew_until_done(identity.serial)

    async def _wait_for_new_serial(self, serial: str, version: int) -> None:
        while True:
            version, identity = await self.current.wait_newer(version)
            if identity is None or identity.serial != serial:
                return

    async def _renew_until_done(self, serial: str) -> None:
        backoff = self._new_backoff()
        failures = _FailureLog()
        while True:
            current = self._require()
            if current.serial != serial:
                return
            try:
                await self._sign(renewal=True)
            except IdentityError as exc:
                self.renewal_failures_total += 1
                self.last_error = str(exc)
                self._failing_serial = serial
                remaining = current.seconds_to_expiry(self._clock())
                meanwhile = (
                    f"keeping the current certificate (valid until {_iso(current.not_after)}, "
                    f"{_duration(remaining)} left)"
                    if remaining > 0
                    else f"the certificate EXPIRED at {_iso(current.not_after)}"
                )
                failures.failed(exc, "certificate renewal", meanwhile)
                self._maybe_warn_expiry(current)
                delay = _retry_delay(backoff, exc)
                version = self.current.version
                with trio.move_on_after(delay):
                    await self._wait_for_new_serial(serial, version)
                continue
            count = failures.reset()
            if count:
                log.info("certificate renewal succeeded after %d failed attempt(s)", count)
            return

    async def _watch_expiry(self) -> None:
        """Wake at each warning threshold of the current certificate; warn when it is
        reached while renewal is failing."""
        while True:
            version = self.current.version
            identity = self.current.value
            pending: list[float] = []
            if identity is not None:
                start, end = identity.issued_at.timestamp(), identity.not_after.timestamp()
                now = self._clock()
                pending = [at for at, _ in expiry_thresholds(start, end) if at > now]
            if not pending:
                await self.current.wait_newer(version)
                continue
            with trio.move_on_after(max(0.0, pending[0] - self._clock()) + 0.01):
                await self.current.wait_newer(version)
                continue
            if identity is not None:
                self._maybe_warn_expiry(identity)

    def _maybe_warn_expiry(self, identity: Identity) -> None:
        if self._failing_serial != identity.serial:
            return  # renewal has not failed for this certificate: nothing to warn about
        now = self._clock()
        level = expiry_level(now, identity.issued_at.timestamp(), identity.not_after.timestamp())
        logged_serial, logged_level = self._warned
        if level == "ok":
            return
        if logged_serial == identity.serial and _LEVELS.index(level) <= _LEVELS.index(logged_level):
            return
        self._warned = (identity.serial, level)
        remaining = identity.seconds_to_expiry(now)
        why = self.last_error or "meshd has not answered"
        if level == "expired":
            log.error(
                "CERTIFICATE EXPIRED: the certificate for %s expired at %s and meshd has not "
                "renewed it (%s); mTLS to and from this sidecar fails until it does",
                identity.spiffe_id,
                _iso(identity.not_after),
                why,
            )
            return
        share = max(0.0, remaining) / max(identity.lifetime_s, 1e-9)
        log.warning(
            "CERTIFICATE EXPIRES SOON: the certificate for %s expires at %s, in %s (%.0f%% "
            "of its lifetime), and renewing it keeps failing (%s); mTLS breaks then unless "
            "meshd at %s answers",
            identity.spiffe_id,
            _iso(identity.not_after),
            _duration(remaining),
            share * 100,
            why,
            self.meshd_url,
        )

    # --- signing ------------------------------------------------------------------------------

    async def _sign(self, *, renewal: bool) -> Identity:
        async with self._sign_lock:
            current = self.current.value if renewal else None
            mtls = (
                current is not None
                and self._https
                and not self._prefer_token
                and not current.expired(self._clock())
            )
            if current is not None and mtls:
                token = ""
                verify = current.control_context
            else:
                token = self.join_token
                if not token:
                    raise JoinTokenRejected(
                        "no join token to request a certificate with; create one: "
                        f"{self._token_hint()} and pass it with --token (MESH_TOKEN)",
                        status=401,
                    )
                verify = await trio.to_thread.run_sync(self._bootstrap_context)
            if not self._trust_domain:
                await self._learn_trust_domain(verify)
            try:
                made = await new_key_and_csr(self.expected_spiffe_id())
            except KeygenError as exc:
                raise SigningUnavailable(f"cannot make a key to sign: {exc}") from exc
            try:
                body = await self._request(
                    "POST",
                    SIGN_PATH,
                    verify,
                    token,
                    json={"csr": made.csr_pem, "proxy": self.proxy_id},
                )
            except CertificateNotAccepted:
                # Revoked, or from a root meshd no longer trusts: the join token may still
                # get a new one (a multi-use token); the next attempt tries it.
                self._prefer_token = bool(self.join_token)
                raise
            issued = self._check_issued(body, made.public_key_der)
            identity = await self._install(
                made.key_pem, issued, source="meshd", save=True, check_chain=True
            )
            if current is not None and identity.lifetime_s < 0.9 * current.lifetime_s - 1:
                log.warning(
                    "meshd issued a certificate for %s valid for only %s, less than the "
                    "previous one (%s): its signing CA certificate may be about to expire "
                    "(or the certificate TTL was lowered)",
                    identity.spiffe_id,
                    _duration(identity.lifetime_s),
                    _duration(current.lifetime_s),
                )
            self._prefer_token = False
            if renewal:
                self.renewals_total += 1
            self._failing_serial = ""
            self.last_error = None
            log.info(
                "certificate %s for %s (serial %s, valid until %s, %s); renewal due around %s",
                "renewed" if renewal else "obtained",
                identity.spiffe_id,
                identity.serial,
                _iso(identity.not_after),
                "over mTLS" if mtls else "with the join token",
                _iso(datetime.fromtimestamp(self.renewal_at(identity), UTC)),
            )
            return identity

    async def _learn_trust_domain(self, verify: ssl.SSLContext) -> None:
        """The trust domain from ``GET /v1/ca/roots``, to put our SPIFFE ID in the CSR.
        Without it (an older meshd: 404) the CSR carries no SAN and meshd adds it."""
        try:
            body = await self._request("GET", ROOTS_PATH, verify, "")
        except (SigningRejected, SigningUnavailable) as exc:
            if isinstance(exc, SigningUnavailable) and exc.status != 404:
                raise
            log.debug("no trust domain from %s (%s): the CSR carries no SAN", ROOTS_PATH, exc)
            return
        domain = body.get("trustDomain")
        if isinstance(domain, str) and domain:
            try:
                spiffe_id(domain, self.namespace, self.service_account)
            except ValueError as exc:
                raise SigningUnavailable(f"meshd's trust domain is invalid: {exc}") from exc
            self._trust_domain = domain

    def _ca_file_pem(self) -> str:
        """The CA file's certificates, read anew (meshd rewrites its bundle file during a
        rotation). Once there is a certificate the mesh roots suffice, so an unreadable
        file is only logged (once)."""
        if self.ca_file is None:
            return ""
        try:
            return "".join(normalize_roots([self.ca_file.read_text()]))
        except (OSError, ValueError) as exc:
            if not self._ca_file_warned:
                self._ca_file_warned = True
                log.warning(
                    "cannot read the CA file %s (%s); verifying meshd with the mesh roots only",
                    self.ca_file,
                    exc,
                )
            return ""

    def _bootstrap_context(self) -> ssl.SSLContext:
        """Verifies meshd (roots we hold + ``--ca-file``) without presenting a cert."""
        cached = self._bootstrap
        if cached is not None and cached[0] == self._roots:
            return cached[1]
        try:
            ctx = control_plane_context(self._roots, ca_file=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise IdentityError(
                f"cannot load the CA file {self.ca_file} to verify meshd with: {exc}"
            ) from exc
        self._bootstrap = (self._roots, ctx)
        return ctx

    async def _request(
        self,
        method: str,
        path: str,
        verify: ssl.SSLContext,
        token: str,
        *,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request to meshd on a connection of its own, made with ``verify`` (signing
        is rare: one per half-life), so its TLS settings are always the current ones."""
        what = f"{method} {self.meshd_url}{path}"
        headers = [("User-Agent", USER_AGENT)]
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        request = build_request(
            method,
            self.meshd_url + path,
            json_body=json,
            headers=headers,
            tls=verify,
            timeout_s=REQUEST_TIMEOUT_S,
            connect_timeout_s=CONNECT_TIMEOUT_S,
        )
        try:
            response = await self._send(request)
        except HttpClientError as exc:
            reason = exc.reason
            hint = ""
            if "CERTIFICATE_VERIFY_FAILED" in reason:
                hint = (
                    "; meshd's certificate is not signed by a CA this sidecar trusts, or "
                    f"not for the address {urlsplit(self.meshd_url).hostname} (give the "
                    "sidecar meshd's CA bundle, <data-dir>/ca-bundle.pem, as its CA file)"
                )
            raise SigningUnavailable(
                f"meshd at {self.meshd_url} is unreachable ({what}: {type(exc).__name__}: "
                f"{reason}){hint}"
            ) from exc
        status = response.status
        if status == 200:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise SigningUnavailable(f"{what}: 200 with a body that is not a JSON object")
            return body
        detail = _problem_detail(response)
        if status == 429 or status >= 500 or status in (404, 408):
            raise SigningUnavailable(
                f"meshd could not answer {what}: {status} {detail}",
                status=status,
                retry_after=retry_after_seconds(response.headers.get("Retry-After"), self._clock()),
            )
        if status in (401, 403) and token:
            raise JoinTokenRejected(
                f"meshd refused the join token ({status}: {detail}); a new join token is "
                f"needed: {self._token_hint()}, then pass it with --token (MESH_TOKEN)",
                status=status,
                detail=detail,
            )
        if status in (401, 403):
            raise CertificateNotAccepted(
                f"meshd refused to renew with the current certificate ({status}: {detail})",
                status=status,
                detail=detail,
            )
        raise SigningRejected(
            f"meshd refused {what}: {status} {detail}", status=status, detail=detail
        )

    def _token_hint(self) -> str:
        return f"meshctl token create --service {self.service} --namespace {self.namespace}"

    def _check_issued(self, body: dict[str, Any], public_key_der: bytes) -> _Issued:
        """meshd's answer, checked: the leaf is for our key and our identity and valid
        now (that it chains to the roots sent is checked by OpenSSL when it is installed).
        A bad answer is :class:`SigningUnavailable` (meshd may do better on the next try);
        it is never installed."""

        def bad(reason: str) -> SigningUnavailable:
            return SigningUnavailable(f"meshd's signed certificate is unusable: {reason}")

        cert_pem, chain_pem, roots = (
            body.get("certificate"),
            body.get("chain") or "",
            body.get("roots"),
        )
        if not isinstance(cert_pem, str) or not isinstance(chain_pem, str):
            raise bad("'certificate' and 'chain' must be PEM strings")
        if not isinstance(roots, list) or not roots or not all(isinstance(r, str) for r in roots):
            raise bad("'roots' must be a non-empty list of PEM strings")
        try:
            leaf = cert_facts(cert_pem)
            chain = pem_certificates(chain_pem) if chain_pem.strip() else []
            normalized = normalize_roots(roots)
        except ValueError as exc:
            raise bad(str(exc)) from exc
        if leaf.spki != public_key_der:
            raise bad("it is not for the key of our CSR")
        actual = leaf.spiffe_id
        if actual is None:
            raise bad("it has no SPIFFE ID (URI SAN)")
        claimed = body.get("spiffeId")
        if isinstance(claimed, str) and claimed != str(actual):
            raise bad(f"it names {actual}, the answer says {claimed}")
        if (actual.namespace, actual.service_account) != (self.namespace, self.service_account):
            raise bad(
                f"it is for {actual}, not for namespace {self.namespace} and service "
                f"account {self.service_account}"
            )
        if self._trust_domain and actual.trust_domain != self._trust_domain:
            raise bad(
                f"it is from trust domain {actual.trust_domain}, expected {self._trust_domain}"
            )
        if leaf.not_after.timestamp() <= self._clock():
            raise bad(f"it expired at {_iso(leaf.not_after)}")
        self._trust_domain = self._trust_domain or actual.trust_domain
        return _Issued(
            cert_pem,
            "".join(der_to_pem(der) for der in chain),
            normalized,
            actual,
            self._clock(),
        )

    # --- installing an identity ---------------------------------------------------------------

    async def _install(
        self,
        key_pem: str,
        issued: _Issued,
        *,
        source: Literal["meshd", "saved"],
        save: bool,
        check_chain: bool = False,
    ) -> Identity:
        """Build, publish and (``save``) save an identity. ``check_chain``: a certificate
        just issued must chain to the roots meshd sent with it (SigningUnavailable)."""
        check_roots = issued.roots if check_chain else ()
        async with self._install_lock:
            # Roots from snapshots are authoritative (their ACK tells meshd we hold them);
            # the roots meshd sends with a certificate only fill in until the first one.
            if not (self._roots_from_snapshot and self._roots):
                self._roots = issued.roots
            issued = dataclasses.replace(issued, roots=self._roots)
            return await self._build_and_publish(
                key_pem, issued, source, save=save, check_roots=check_roots
            )

    async def _build_and_publish(
        self,
        key_pem: str,
        issued: _Issued,
        source: Literal["meshd", "saved"],
        *,
        save: bool,
        check_roots: Sequence[str] = (),
    ) -> Identity:
        saved = SavedIdentity(
            key_pem=key_pem,
            cert_pem=issued.cert_pem,
            chain_pem=issued.chain_pem,
            roots=issued.roots,
            trust_domain=issued.spiffe_id.trust_domain,
            issued_at=issued.issued_at,
        )
        try:
            contexts, state_error = await trio.to_thread.run_sync(
                self._materialize, saved, save, check_roots
            )
        except ValueError as exc:  # only with check_roots: nothing was kept
            raise SigningUnavailable(f"meshd's signed certificate is unusable: {exc}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise IdentityError(
                f"cannot build the TLS contexts in {self.state_dir}: {exc}"
            ) from exc
        if state_error is not None and not self._state_warned:
            self._state_warned = True
            log.warning("%s; a restart while meshd is down would have no certificate", state_error)
        facts = cert_facts(issued.cert_pem)
        not_before, not_after = facts.not_before, facts.not_after
        issued_at = min(max(issued.issued_at, not_before.timestamp()), not_after.timestamp())
        self._generation += 1
        identity = Identity(
            spiffe_id=issued.spiffe_id,
            serial=facts.serial_hex,
            not_before=not_before,
            not_after=not_after,
            issued_at=datetime.fromtimestamp(issued_at, UTC),
            trust_bundle=bundle_digest(issued.roots) if issued.roots else "",
            generation=self._generation,
            source=source,
            cert_pem=issued.cert_pem,
            chain_pem=issued.chain_pem,
            roots=issued.roots,
            server_context=contexts.server,
            client_context=contexts.client,
            control_context=contexts.control,
        )
        self._key_pem = key_pem
        self.current.set(identity)
        return identity

    def _materialize(
        self, saved: SavedIdentity, save: bool, check_roots: Sequence[str] = ()
    ) -> tuple[TlsContexts, StateError | None]:
        """Worker thread: the contexts, then the state file (its failure is reported,
        not raised: the sidecar serves on, only a restart would lack the certificate)."""
        credentials = (saved.key_pem + saved.cert_pem + saved.chain_pem).encode()
        contexts = build_contexts(
            self.state_dir,
            credentials,
            saved.roots,
            ca_pem=self._ca_file_pem(),
            alpn=self.alpn,
            check_roots=check_roots,
        )
        if not save:
            return contexts, None
        try:
            save_state(self.state_dir, saved)
        except StateError as exc:
            return contexts, exc
        return contexts, None


# --- helpers --------------------------------------------------------------------------------


def _retry_delay(backoff: Backoff, exc: IdentityError) -> float:
    delay = backoff.next_delay()
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, float | int):
        delay = max(delay, float(retry_after))
    return delay


def _problem_detail(response: HttpResponse) -> str:
    """The ``detail`` of an RFC 9457 problem document, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")
        if isinstance(detail, str):
            return detail
    return response.text[:300].strip() or response.reason_phrase


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{math.ceil(seconds)} s"
