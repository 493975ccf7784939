"""HTTPS to meshd: register the instance, long-poll its config, NACK, deregister.

The protocol (``meshd/api/proxies.py``, ``meshd/xds/hub.py``):

- ``PUT /v1/instances/{id}`` registers (idempotent: repeating it is the heartbeat, and
  carries the app's health: ``healthy``, ``ttlSeconds``, ``healthOutput``);
  ``DELETE /v1/instances/{id}`` deregisters.
- ``GET /v1/xds/{proxy}?version=V&wait=S`` answers 200 with a snapshot whose version
  (header ``X-Mesh-Version``) differs from V, or 304 after S seconds. Polling with the
  version the proxy runs ACKs it. 404: meshd does not know the proxy (register again).
- ``POST /v1/xds/{proxy}/ack`` with ``{"version", "error"}`` NACKs a version; meshd
  does not resend it.

Every request authenticates with the workload's certificate (mTLS), never a bearer
token: meshd lets a workload act only for instances of its own namespace and service
account. The TLS context comes from ``tls()`` (``IdentityManager.control_plane_context``),
read before every request; identities are immutable, so a renewal or a change of the
trust roots shows as a *new* context object. Each request goes out on a connection of its
own made with the context read for it (:mod:`sidecar.http_client`): a request in flight
(a long poll, typically) keeps the connection, and the context, it started with and is
not cut off; the next request uses the new context; no connection made with an old
certificate is ever reused.

Transport errors (:class:`~sidecar.errors.HttpClientError`) and statuses become the typed
errors of :mod:`sidecar.errors` here.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

from sidecar import __version__, http_client
from sidecar.errors import (
    ControlPlaneError,
    ControlPlaneRejected,
    ControlPlaneUnavailable,
    HttpClientError,
    InstanceUnknown,
    SidecarError,
)
from sidecar.http_client import HttpResponse, Send, build_request

log = logging.getLogger("sidecar.control")

VERSION_HEADER = "X-Mesh-Version"
USER_AGENT = f"mesh-sidecar/{__version__}"
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0
POLL_GRACE_S = 15.0
"""How much longer than the requested wait a long poll may take before it counts as
hung (meshd answers at the end of the wait; the network may add a little)."""

TlsSource = Callable[[], ssl.SSLContext]
"""What the client asks for the TLS context before each request."""


@dataclass(frozen=True, slots=True)
class Registration:
    """The body of ``PUT /v1/instances/{id}``. ``port`` is where peers connect: the
    sidecar's inbound port."""

    service: str
    namespace: str
    address: str
    port: int
    app_port: int
    protocol: str
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str = ""
    meshed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "namespace": self.namespace,
            "address": self.address,
            "port": self.port,
            "appPort": self.app_port,
            "protocol": self.protocol,
            "labels": dict(self.labels),
            "serviceAccount": self.service_account,
            "meshed": self.meshed,
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The app's health as one report tells the registry: ``healthy``, the last check's
    ``output``, and ``ttl_s``, how long the registration lasts without another report
    (twice the check interval)."""

    healthy: bool
    output: str
    ttl_s: float

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "ttlSeconds": self.ttl_s, "healthOutput": self.output}


@dataclass(frozen=True, slots=True)
class Changed:
    """The poll brought a snapshot: ``version`` as announced, ``body`` undecoded."""

    version: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Unchanged:
    """The wait ended without a change (304)."""


PollResult = Changed | Unchanged


class ControlClient:
    """The HTTPS client for all requests to meshd; use as an async context manager.
    ``tls`` gives the current TLS context (see the module docstring); ``send`` is for
    tests (a fake meshd)."""

    def __init__(self, base_url: str, tls: TlsSource, *, send: Send | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._tls = tls
        # Heartbeats every few seconds and back-to-back polls: keep connections alive.
        self._pool = http_client.ConnectionPool()
        self._send = send or self._pool.send
        self._closed = False

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """No new requests from now on; idle connections are closed (a request still
        running closes its own when it ends)."""
        self._closed = True
        await self._pool.aclose()

    # --- the requests -------------------------------------------------------------------

    async def register(
        self, instance_id: str, registration: Registration, health: HealthReport | None = None
    ) -> None:
        """Register, or heartbeat: the same body again. With ``health`` the body carries
        the app's health and how long the registration lasts without another heartbeat;
        without it meshd takes the instance as healthy for its default TTL (90 s)."""
        body = registration.to_json()
        if health is not None:
            body.update(health.to_json())
        await self._request("PUT", f"/v1/instances/{_seg(instance_id)}", json=body)

    async def deregister(self, instance_id: str, *, timeout_s: float = 3.0) -> bool:
        """False when meshd did not know the instance (nothing to do)."""
        try:
            await self._request(
                "DELETE",
                f"/v1/instances/{_seg(instance_id)}",
                timeout_s=timeout_s,
                connect_timeout_s=timeout_s,
            )
        except InstanceUnknown:
            return False
        return True

    async def poll(self, proxy_id: str, version: str, wait_s: float) -> PollResult:
        response = await self._request(
            "GET",
            f"/v1/xds/{_seg(proxy_id)}",
            params={"version": version, "wait": f"{wait_s:g}"},
            timeout_s=wait_s + POLL_GRACE_S,
        )
        if response.status == 304:
            return Unchanged()
        return Changed(response.headers.get(VERSION_HEADER, ""), response.body)

    async def nack(self, proxy_id: str, version: str, reason: str) -> None:
        await self._request(
            "POST",
            f"/v1/xds/{_seg(proxy_id)}/ack",
            json={"version": version, "error": reason or "rejected"},
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> HttpResponse:
        what = f"{method} {self.base_url}{path}"
        if self._closed:
            raise ControlPlaneUnavailable("the connection to meshd is closed (the sidecar stops)")
        try:
            context = self._tls()
        except (SidecarError, OSError, ssl.SSLError) as exc:
            raise ControlPlaneUnavailable(f"no TLS context to reach meshd with: {exc}") from exc
        request = build_request(
            method,
            self.base_url + path,
            params=params,
            json_body=json,
            headers=(("User-Agent", USER_AGENT),),
            tls=context,
            timeout_s=timeout_s,
            connect_timeout_s=min(connect_timeout_s, timeout_s),
        )
        try:
            response = await self._send(request)
        except HttpClientError as exc:
            reason = exc.reason
            hint = ""
            if "CERTIFICATE_VERIFY_FAILED" in reason:
                hint = (
                    "; meshd's certificate does not chain to the mesh roots this sidecar "
                    "holds or to its --ca-file, or is not for this address"
                )
            raise ControlPlaneUnavailable(
                f"meshd at {self.base_url} is unreachable ({what}: {type(exc).__name__}: "
                f"{reason}){hint}"
            ) from exc
        status = response.status
        if status < 300 or status == 304:
            return response
        detail = _problem_detail(response)
        if status == 404:
            raise InstanceUnknown(f"{what}: 404 {detail}", status=status, detail=detail)
        if status >= 500 or status in (408, 429):
            raise ControlPlaneUnavailable(
                f"meshd at {self.base_url} failed ({what}: {status} {detail})",
                status=status,
                detail=detail,
            )
        hint = {
            401: "meshd did not accept this sidecar's certificate (none presented: it has "
            "expired and is being renewed); the sidecar retries",
            403: "the certificate's namespace and service account must be the instance's: "
            "check --namespace and --service-account",
        }.get(status, "check this sidecar's flags")
        raise ControlPlaneRejected(
            f"meshd rejected {what}: {status} {detail}; {hint}", status=status, detail=detail
        )


def _seg(value: str) -> str:
    return quote(value, safe="")


def _problem_detail(response: HttpResponse) -> str:
    """The ``detail`` of an RFC 9457 problem document, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return str(detail)[:300]
    return response.text[:300].strip() or response.reason_phrase


# --- retry pacing and connectivity ------------------------------------------------------


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": the n-th delay is uniformly drawn from
    ``[d/2, d]`` where ``d = min(maximum, initial * factor**n)``, so a fleet of sidecars
    does not reconnect in lockstep after a meshd restart."""

    initial: float = 0.2
    maximum: float = 5.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class Connectivity:
    """Whether meshd answers, fed by every request. Logs a line when the link goes down
    (or fails in a new way) and when it comes back — never one per retry."""

    def __init__(self, base_url: str, serving: Callable[[], str] | None = None) -> None:
        self.base_url = base_url
        self.connected = False
        self.last_error: str | None = None
        self._serving = serving or (lambda: "")
        self._failure: tuple[type[ControlPlaneError], int | None] | None = None
        self._down_since: float | None = None
        self._ever_connected = False

    def succeeded(self) -> None:
        if not self.connected:
            if self._down_since is not None and self._ever_connected:
                log.info(
                    "meshd at %s answers again (after %.1f s)",
                    self.base_url,
                    time.monotonic() - self._down_since,
                )
            elif self._down_since is not None:
                log.info("meshd at %s answers now", self.base_url)
        self.connected = True
        self._ever_connected = True
        self.last_error = None
        self._failure = None
        self._down_since = None

    def failed(self, exc: ControlPlaneError) -> None:
        kind = (type(exc), exc.status)
        if self.connected or self._failure != kind:
            serving = self._serving()
            meanwhile = f"serving config version {serving}" if serving else "no config yet"
            log.warning("%s; %s; retrying with backoff", exc, meanwhile)
        if self._down_since is None:
            self._down_since = time.monotonic()
        self.connected = False
        self.last_error = str(exc)
        self._failure = kind
