"""Where the proxy reports to telemetry (:mod:`sidecar.telemetry`): every call site is
here, so the request path builds one :class:`RequestRecord` and makes one call.

:class:`Reporter` holds the :class:`Telemetry` once there is one (the agent makes it
when the workload's SPIFFE ID is known, i.e. after the first certificate); until then
nothing is recorded. The access-log-only fields of a record are filled only when an
access log is on: decoding them costs more than the metrics.
"""

from __future__ import annotations

import time

from sidecar.telemetry import (
    UNKNOWN_SERVICE,
    UNKNOWN_WORKLOAD,
    Reporter,
    RequestRecord,
    SecurityPolicy,
    Service,
    TcpLabels,
    Telemetry,
    Workload,
)

__all__ = ["RequestFacts", "TelemetrySink"]

SOURCE = Reporter.SOURCE
DESTINATION = Reporter.DESTINATION
MTLS = SecurityPolicy.MUTUAL_TLS
PLAINTEXT = SecurityPolicy.NONE

_PEERS_CACHED = 1024


class RequestFacts:
    """What one request's exchange learned, filled in as it goes (one per request, its
    fields set in place: cheaper than a record rebuilt at each step)."""

    __slots__ = (
        "attempts",
        "cluster",
        "details",
        "flags",
        "peer",
        "policy",
        "route_name",
        "sent",
        "service",
        "status",
        "upstream_host",
        "upstream_time",
    )

    def __init__(self) -> None:
        self.status = 0
        self.sent = 0
        self.flags = "-"
        self.peer: Workload = UNKNOWN_WORKLOAD
        self.service: Service = UNKNOWN_SERVICE
        self.policy: SecurityPolicy = SecurityPolicy.UNKNOWN
        self.attempts = 0
        self.cluster: str | None = None
        self.upstream_host: str | None = None
        self.route_name: str | None = None
        self.details: str | None = None
        self.upstream_time: float | None = None

    def flag(self, flag: str) -> None:
        self.flags = flag if self.flags == "-" else f"{self.flags},{flag}"


class TelemetrySink:
    """The proxy's side of telemetry."""

    __slots__ = ("_peers", "telemetry")

    def __init__(self, telemetry: Telemetry | None = None) -> None:
        self.telemetry = telemetry
        self._peers: dict[str, Workload] = {}

    def attach(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def inbound_peer(self, principal: str | None) -> Workload:
        """The client of an inbound connection, known by its certificate (cached)."""
        if not principal:
            return UNKNOWN_WORKLOAD
        peer = self._peers.get(principal)
        if peer is None:
            if len(self._peers) >= _PEERS_CACHED:
                self._peers.clear()
            peer = self._peers[principal] = Workload.from_principal(principal)
        return peer

    def request(
        self,
        reporter: Reporter,
        facts: RequestFacts,
        started: float,
        received: int,
        *,
        method: bytes = b"",
        target: bytes = b"",
        authority: bytes = b"",
        user_agent: bytes | None = None,
        request_id: bytes | None = None,
        peer_address: str | None = None,
        local_address: str | None = None,
        start_time: float = 0.0,
    ) -> None:
        """One finished request. ``started`` is ``time.perf_counter()`` at its first
        byte; ``received`` the bytes read for it."""
        telemetry = self.telemetry
        if telemetry is None:
            return
        duration_ms = (time.perf_counter() - started) * 1000.0
        if telemetry.access_log is None:
            telemetry.record(
                RequestRecord(
                    reporter,
                    facts.peer,
                    facts.service,
                    facts.status,
                    duration_ms,
                    received,
                    facts.sent,
                    facts.flags,
                    facts.policy,
                )
            )
            return
        telemetry.record(
            RequestRecord(
                reporter,
                facts.peer,
                facts.service,
                facts.status,
                duration_ms,
                received,
                facts.sent,
                facts.flags,
                facts.policy,
                start_time=start_time,
                method=method.decode("latin-1") or None,
                authority=authority.decode("latin-1") or None,
                path=target.decode("latin-1") or None,
                protocol="HTTP/1.1",
                user_agent=user_agent.decode("latin-1") if user_agent is not None else None,
                request_id=request_id.decode("latin-1") if request_id else None,
                route_name=facts.route_name,
                upstream_cluster=facts.cluster,
                upstream_host=facts.upstream_host,
                downstream_local_address=local_address,
                downstream_remote_address=peer_address,
                upstream_service_time_ms=facts.upstream_time,
                upstream_request_attempts=max(facts.attempts, 1),
                response_code_details=facts.details,
            )
        )

    def tcp_labels(
        self, reporter: Reporter, peer: Workload, service: Service, secure: bool
    ) -> TcpLabels:
        return TcpLabels(reporter, peer, service, MTLS if secure else PLAINTEXT)

    def tcp_opened(self, labels: TcpLabels) -> None:
        if self.telemetry is not None:
            self.telemetry.tcp_opened(labels)

    def tcp_transferred(self, labels: TcpLabels, sent: int, received: int) -> None:
        if self.telemetry is not None:
            self.telemetry.tcp_transferred(labels, sent, received)

    def tcp_closed(self, labels: TcpLabels, sent: int, received: int) -> None:
        if self.telemetry is not None:
            self.telemetry.tcp_closed(labels, sent, received)
