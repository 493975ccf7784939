"""The admin server on 127.0.0.1:<admin-port>: ``/ready``, ``/config_dump``,
``/stats/prometheus``, ``/clusters`` (the endpoints Envoy's admin interface has).

Three layers, the first two without I/O:

- :class:`HeadParser` turns bytes into :class:`RequestHead` (or an :class:`HttpError`
  with the status to answer): CRLF framing, a request head of at most 8 KiB (else 431),
  at most 100 header fields, origin-form targets, no obs-fold, no control bytes, one
  Host, one Content-Length, not both Content-Length and Transfer-Encoding. Admin
  requests have no body: a request that announces one is answered and the connection
  closed, so its body is never parsed as a request.
- :class:`AdminApp` maps a :class:`RequestHead` to a :class:`Response` from the
  sidecar's state; :func:`render_response` turns that into bytes.
- :class:`AdminServer` runs them on Trio: keep-alive, pipelining in order, an idle
  timeout, a cap on connections, a lingering close after an error.

GET and HEAD only; any other method gets 405. Nothing is logged per request.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

from meshd.compile import codec
from sidecar.config_store import AppliedConfig, ConfigStore
from sidecar.control_client import Connectivity
from sidecar.errors import AdminServerError
from sidecar.identity import IdentityStats
from sidecar.settings import Settings

log = logging.getLogger("sidecar.admin")

MAX_HEAD_BYTES = 8 * 1024
MAX_HEADERS = 100
RECV_SIZE = 16 * 1024
IDLE_TIMEOUT_S = 15.0
SEND_TIMEOUT_S = 10.0
LINGER_S = 1.0
LINGER_BYTES = 64 * 1024
MAX_CONNECTIONS = 64

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET_BYTE = re.compile(rb"[\x00-\x20\x7f-\xff#]")
_HTTP_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
ALLOWED_METHODS = ("GET", "HEAD")
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


# --- sans-IO: bytes -> request heads ----------------------------------------------------


class HttpError(Exception):
    """The request cannot be served; answer ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    http_version: str
    headers: tuple[tuple[bytes, bytes], ...]
    keep_alive: bool
    has_body: bool

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


class HeadParser:
    """Feed received bytes; take request heads out one at a time, in order."""

    def __init__(self, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_head_bytes

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_head(self) -> RequestHead | None:
        """The next complete request head, None until one is complete. Raises
        :class:`HttpError`; the parser is unusable afterwards."""
        buf = self._buffer
        while buf.startswith(b"\r\n"):  # RFC 9112 2.2: ignore empty lines before a request
            del buf[:2]
        end = buf.find(b"\r\n\r\n", 0, self._max + 4)
        if end < 0:
            if len(buf) >= self._max:  # the terminator still to come cannot fit
                raise HttpError(431, f"the request head is larger than {self._max} bytes")
            return None
        if end + 4 > self._max:
            raise HttpError(431, f"the request head is larger than {self._max} bytes")
        head = bytes(buf[:end])
        del buf[: end + 4]
        return parse_head(head)


def parse_head(head: bytes) -> RequestHead:
    """Parse a request head (without its final empty line)."""
    request_line, *lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if _HTTP_VERSION.fullmatch(version):
            raise HttpError(505, "only HTTP/1.1 and HTTP/1.0 are served")
        raise HttpError(400, "malformed HTTP version")
    if not target.startswith(b"/") or _BAD_TARGET_BYTE.search(target):
        raise HttpError(400, "the target must be a path (origin-form)")
    if len(lines) > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding is not accepted")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header field")
        value = value.strip(b" \t")
        if _BAD_VALUE_BYTE.search(value):
            raise HttpError(400, "control bytes in a header value")
        headers.append((name.lower(), value))
    hosts = [v for n, v in headers if n == b"host"]
    if len(hosts) > 1 or (version == b"HTTP/1.1" and not hosts):
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
    lengths = {v for n, v in headers if n == b"content-length"}
    chunked = any(n == b"transfer-encoding" for n, _ in headers)
    if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
        raise HttpError(400, "invalid Content-Length")
    if lengths and chunked:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    has_body = chunked or any(int(v) > 0 for v in lengths)
    connection = b",".join(v for n, v in headers if n == b"connection").lower()
    tokens = {t.strip() for t in connection.split(b",")}
    keep_alive = b"close" not in tokens if version == b"HTTP/1.1" else b"keep-alive" in tokens
    return RequestHead(
        method=method.decode("ascii"),
        target=target.decode("ascii"),
        http_version=version.decode("ascii"),
        headers=tuple(headers),
        keep_alive=keep_alive,
        has_body=has_body,
    )


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


def render_response(
    response: Response, *, keep_alive: bool, head_only: bool = False, http_version: str = ""
) -> bytes:
    """Status line, headers and body. ``head_only`` keeps Content-Length but no body."""
    lines = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    if not keep_alive:
        lines.append("Connection: close")
    elif http_version == "HTTP/1.0":
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def error_response(error: HttpError) -> Response:
    return Response(error.status, f"{error.reason}\n".encode())


# --- the endpoints ----------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class IdentityView(Protocol):
    """What the admin port shows of the workload identity (:class:`IdentityManager`)."""

    def stats(self) -> IdentityStats: ...

    def prometheus_lines(self) -> list[str]: ...


class TelemetryView(Protocol):
    """The proxy's metrics (:class:`sidecar.telemetry.Telemetry`): Prometheus text
    (0.0.4), complete lines, appended to ``/stats/prometheus``."""

    def render(self) -> str: ...


class HealthView(Protocol):
    """The app's health and how it is reported (:class:`sidecar.agent.Agent`)."""

    @property
    def app_healthy(self) -> bool: ...

    def health_json(self) -> dict[str, Any]: ...


class ProxyView(Protocol):
    """The proxy's listeners (:class:`sidecar.proxy.ProxyServer`), for ``/ready``."""

    def not_ready_reason(self) -> str | None: ...


class WorkersView(Protocol):
    """The worker processes of ``--workers N``
    (:class:`~sidecar.workers.supervisor.Supervisor`)."""

    def not_ready_reason(self) -> str | None: ...

    def workers_json(self) -> list[dict[str, Any]]: ...

    def render_metrics(self) -> str:
        """The Istio metrics summed over every process ("" before there are any)."""
        ...

    async def refresh(self) -> None:
        """Get every worker's current counters (before a scrape)."""
        ...


REFRESHED_PATHS = frozenset(("/stats/prometheus", "/config_dump"))
"""The endpoints that show the workers' counters: the workers are asked first."""


def _iso_dt(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class AdminApp:
    """Answers admin requests from the sidecar's live state. Pure given that state."""

    def __init__(
        self,
        settings: Settings,
        proxy_id: str,
        store: ConfigStore,
        connectivity: Connectivity,
        identity: IdentityView,
        telemetry: TelemetryView | None = None,
        proxy: ProxyView | None = None,
        health: HealthView | None = None,
        workers: WorkersView | None = None,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.proxy_id = proxy_id
        self.store = store
        self.connectivity = connectivity
        self.identity = identity
        self.telemetry = telemetry
        self.proxy = proxy
        self.health = health
        self._routes = {
            "/ready": self.ready,
            "/config_dump": self.config_dump,
            "/stats/prometheus": self.prometheus,
            "/clusters": self.clusters,
        }

    def handle(self, head: RequestHead) -> Response:
        endpoint = self._routes.get(head.path)
        if endpoint is None:
            known = ", ".join(self._routes)
            return Response(404, f"no admin endpoint {head.path}; try {known}\n".encode())
        if head.method not in ALLOWED_METHODS:
            return Response(
                405,
                f"{head.method} is not allowed; the admin endpoints are read-only\n".encode(),
                headers=(("Allow", ", ".join(ALLOWED_METHODS)),),
            )
        return endpoint()

    def ready(self) -> Response:
        """200 with a config AND an unexpired certificate AND the proxy listening (not
        draining); else 503 with every reason."""
        reasons = []
        stats = self.identity.stats()
        if stats.seconds_to_expiry is None:
            why = stats.last_error or "requesting the first one from meshd"
            reasons.append(f"no certificate yet ({why})")
        elif stats.seconds_to_expiry <= 0:
            why = stats.last_error or "meshd has not renewed it yet"
            reasons.append(f"the certificate expired at {_iso_dt(stats.not_after)} ({why})")
        if self.store.current.value is None:
            why = self.connectivity.last_error or "waiting for the first config from meshd"
            reasons.append(f"no config yet ({why})")
        if self.proxy is not None and (proxy_reason := self.proxy.not_ready_reason()):
            reasons.append(proxy_reason)
        if self.workers is not None and (workers_reason := self.workers.not_ready_reason()):
            reasons.append(workers_reason)
        if not reasons:
            return Response(200, b"ready\n")
        return Response(503, f"not ready: {'; '.join(reasons)}\n".encode())

    def identity_json(self) -> dict[str, Any]:
        """The certificate as ``/config_dump`` shows it (never the key)."""
        stats = self.identity.stats()
        remaining = stats.seconds_to_expiry
        return {
            "spiffeId": stats.spiffe_id,
            "serial": stats.serial,
            "notAfter": _iso_dt(stats.not_after),
            "secondsToExpiry": None if remaining is None else round(remaining, 1),
            "trustBundle": stats.trust_bundle or None,
            "roots": stats.roots,
            "renewals": stats.renewals_total,
            "renewalFailures": stats.renewal_failures_total,
            "lastError": stats.last_error,
        }

    def config_dump(self) -> Response:
        applied: AppliedConfig | None = self.store.current.value
        rejection = self.store.last_rejection
        s = self.settings
        document: dict[str, Any] = {
            "proxy": self.proxy_id,
            "version": applied.version if applied else None,
            "source": applied.source if applied else None,
            "appliedAt": _iso(applied.applied_at) if applied else None,
            "controlPlane": {
                "url": s.meshd_url,
                "connected": self.connectivity.connected,
                "lastError": self.connectivity.last_error,
                "caFile": str(s.ca_file),
            },
            "identity": self.identity_json(),
            "health": self.health.health_json() if self.health is not None else None,
            "sidecar": {
                "service": s.service,
                "namespace": s.namespace,
                "address": s.address,
                "appPort": s.app_port,
                "inboundPort": s.inbound_port,
                "outboundPort": s.outbound_port,
                "adminPort": s.admin_port,
                "protocol": s.protocol,
                "labels": dict(s.labels),
                "serviceAccount": s.service_account or s.service,
                "stateDir": str(s.state_dir),
            },
            "lastRejection": {
                "version": rejection.version,
                "reason": rejection.reason,
                "at": _iso(rejection.at),
            }
            if rejection
            else None,
            "snapshot": codec.to_plain(applied.snapshot) if applied else None,
        }
        if self.workers is not None:
            document["workers"] = self.workers.workers_json()
        body = json.dumps(document, indent=2, sort_keys=False).encode() + b"\n"
        return Response(200, body, JSON)

    def prometheus(self) -> Response:
        applied = self.store.current.value
        lines = [
            "# HELP mesh_sidecar_config_updates_total Snapshots from meshd this sidecar applied.",
            "# TYPE mesh_sidecar_config_updates_total counter",
            f"mesh_sidecar_config_updates_total {self.store.updates_total}",
            "# HELP mesh_sidecar_config_rejections_total Snapshots from meshd this sidecar "
            "refused (NACKed).",
            "# TYPE mesh_sidecar_config_rejections_total counter",
            f"mesh_sidecar_config_rejections_total {self.store.rejections_total}",
            "# HELP mesh_sidecar_control_plane_connected 1 when meshd answered the last "
            "request, else 0.",
            "# TYPE mesh_sidecar_control_plane_connected gauge",
            f"mesh_sidecar_control_plane_connected {int(self.connectivity.connected)}",
            "# HELP mesh_sidecar_config_version_info The config version being served.",
            "# TYPE mesh_sidecar_config_version_info gauge",
        ]
        if applied is not None:
            lines.append(
                f'mesh_sidecar_config_version_info{{version="{_label_value(applied.version)}"}} 1'
            )
        if self.health is not None:
            lines += [
                "# HELP mesh_sidecar_app_healthy 1 when the app passes its health check "
                "(always with --health-check none), else 0.",
                "# TYPE mesh_sidecar_app_healthy gauge",
                f"mesh_sidecar_app_healthy {int(self.health.app_healthy)}",
            ]
        lines += self.identity.prometheus_lines()
        text = "\n".join(lines) + "\n"
        if self.workers is not None:  # the Istio metrics, summed over the processes
            text += self.workers.render_metrics()
        elif self.telemetry is not None:  # the Istio request and TCP metrics
            text += self.telemetry.render()
        return Response(200, text.encode(), PROMETHEUS)

    def clusters(self) -> Response:
        """Envoy's ``/clusters`` text: ``cluster::field::value`` for each cluster, then
        ``cluster::host:port::field::value`` for each endpoint."""
        applied = self.store.current.value
        lines: list[str] = []
        if applied is not None:
            for c in applied.snapshot.outbound.clusters:
                lines.append(f"{c.name}::added_via_api::true")
                lines.append(f"{c.name}::tls_mode::{c.tls_mode}")
                for ep in c.endpoints:
                    where = f"{c.name}::{_host_port(ep.address, ep.port)}"
                    lines.append(f"{where}::weight::{ep.weight}")
                    if ep.instance:
                        lines.append(f"{where}::instance::{ep.instance}")
                    if ep.identity:
                        lines.append(f"{where}::identity::{ep.identity}")
        return Response(200, "".join(f"{line}\n" for line in lines).encode())


# --- on Trio ------------------------------------------------------------------------------


class AdminServer:
    """Serves an :class:`AdminApp` on ``host:port``. :meth:`serve` signals readiness
    through ``task_status`` once the socket listens, and runs until cancelled."""

    def __init__(
        self,
        app: AdminApp,
        host: str,
        port: int,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self._active = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise AdminServerError(
                f"the admin server cannot listen on {self.host}:{self.port}: "
                f"{exc.strerror or exc}; choose a free port with --admin-port (MESH_ADMIN_PORT)"
            ) from exc
        port = int(listeners[0].socket.getsockname()[1])
        try:
            async with trio.open_nursery() as nursery:
                # serve_listeners backs off when accept() fails for lack of descriptors.
                await nursery.start(
                    functools.partial(trio.serve_listeners, self._connection, listeners)
                )
                log.info("admin server listening on http://%s", _host_port(self.host, port))
                task_status.started(port)
        finally:
            log.info("admin server stopped")

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self._active >= self.max_connections:
            await stream.aclose()
            return
        self._active += 1
        try:
            async with stream:
                await self._exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._active -= 1

    async def _exchange(self, stream: trio.SocketStream) -> None:
        parser = HeadParser()
        while True:
            try:
                head = None
                with trio.move_on_after(self.idle_timeout_s):
                    head = await _read_head(stream, parser)
                if head is None:  # the client closed, or stayed idle too long
                    return
            except HttpError as exc:
                await _send(stream, render_response(error_response(exc), keep_alive=False))
                await _linger(stream)
                return
            keep_alive = head.keep_alive and not head.has_body
            if self.app.workers is not None and head.path in REFRESHED_PATHS:
                await self.app.workers.refresh()
            try:
                response = self.app.handle(head)
            except Exception:  # a bug in one endpoint must not take the sidecar down
                log.exception("admin endpoint %s failed", head.path)
                response = Response(500, b"internal error; see the sidecar's log\n")
            data = render_response(
                response,
                keep_alive=keep_alive,
                head_only=head.method == "HEAD",
                http_version=head.http_version,
            )
            await _send(stream, data)
            if not keep_alive:
                await _linger(stream)
                return


async def _read_head(stream: trio.SocketStream, parser: HeadParser) -> RequestHead | None:
    while True:
        head = parser.next_head()
        if head is not None:
            return head
        data = await stream.receive_some(RECV_SIZE)
        if not data:
            return None
        parser.feed(data)


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    with trio.move_on_after(SEND_TIMEOUT_S) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        raise trio.BrokenResourceError("the client did not read the response in time")


async def _linger(stream: trio.SocketStream) -> None:
    """Close gently: stop sending, then read (and drop) what the client still sends for
    a moment, so the kernel does not answer unread data with a reset that could destroy
    the response before the client read it."""
    try:
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    with trio.move_on_after(LINGER_S):
        drained = 0
        while drained < LINGER_BYTES:
            data = await stream.receive_some(RECV_SIZE)
            if not data:
                return
            drained += len(data)
