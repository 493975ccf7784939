"""The JSON access log: one object per line per finished request, off unless the proxy
is started with ``--access-log``.

The fields and their names are those of Istio's default JSON access log
(``EnvoyJSONLogFormatIstio`` in istio/istio ``pilot/pkg/model/telemetry_logging.go``),
keys in alphabetical order as Envoy writes them, ``null`` for a value the request did
not have, plus a few Envoy operators Istio leaves out and a mesh wants
(``connection_security_policy``, the peer's SPIFFE ID, the attempt count). See
``docs/metrics.md`` for the list.

Each line is built with the C JSON string encoder (no dict, no ``json.dumps``) and
written with a single ``write``; the stream is flushed at most once per
``flush_interval_s`` (Envoy flushes its access log files every second), so a busy proxy
does not make a system call per request. A write that fails is counted
(``mesh_sidecar_access_log_write_errors_total``), logged once, and never raised into the
request path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol

from sidecar.telemetry.labels import Reporter, RequestRecord

log = logging.getLogger("sidecar.telemetry")

DEFAULT_FLUSH_INTERVAL_S: Final = 1.0

FIELDS: Final = (
    "authority",
    "bytes_received",
    "bytes_sent",
    "connection_security_policy",
    "downstream_local_address",
    "downstream_peer_uri_san",
    "downstream_remote_address",
    "duration",
    "method",
    "path",
    "protocol",
    "request_id",
    "requested_server_name",
    "response_code",
    "response_code_details",
    "response_flags",
    "route_name",
    "start_time",
    "upstream_cluster",
    "upstream_host",
    "upstream_local_address",
    "upstream_peer_uri_san",
    "upstream_request_attempt_count",
    "upstream_service_time",
    "upstream_transport_failure_reason",
    "user_agent",
    "x_forwarded_for",
)


class TextSink(Protocol):
    """Where lines go: ``sys.stdout``, an open text file, an ``io.StringIO``."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


class OwnedSink(TextSink, Protocol):
    """A sink the access log opened itself and closes."""

    def close(self) -> object: ...


SHARED_BUFFER_BYTES: Final = 64 * 1024


class SharedAppendFile:
    """A file several processes append to (``--workers``): lines are kept until
    :meth:`flush` (or until 64 KiB are pending) and go out in ONE ``write`` on an
    ``O_APPEND`` descriptor. A buffered text file may split a line over two writes,
    and another process's line could land between the halves; one append-mode write
    of whole lines to a regular file is never interleaved with another."""

    def __init__(self, path: Path | str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._pending: list[str] = []
        self._size = 0

    def write(self, text: str, /) -> int:
        self._pending.append(text)
        self._size += len(text)
        if self._size >= SHARED_BUFFER_BYTES:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if not self._pending:
            return
        data = memoryview("".join(self._pending).encode())
        self._pending.clear()
        self._size = 0
        if self._fd < 0:
            raise ValueError("the access log file is closed")
        while data:  # a short write only happens when the disk fills up
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _s(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _peer(principal: str) -> str:
    return "null" if principal == "unknown" else encode_basestring_ascii(principal)


class AccessLog:
    """Writes one JSON line per :class:`RequestRecord` to ``stream``."""

    def __init__(
        self,
        stream: TextSink,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.flush_interval_s = flush_interval_s
        self.lines = 0
        self.errors = 0
        self._clock = clock
        self._flushed_at = clock()
        self._owned: OwnedSink | None = None
        self._second = -1
        self._second_text = ""

    @classmethod
    def to_path(
        cls,
        path: Path | str,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        shared: bool = False,
    ) -> AccessLog:
        """An access log appending to the file at ``path`` (closed by :meth:`close`).
        ``shared``: other processes append to the same file (see
        :class:`SharedAppendFile`)."""
        handle: OwnedSink = (
            SharedAppendFile(path) if shared else Path(path).open("a", encoding="utf-8")  # noqa: SIM115 — closed by close()
        )
        access_log = cls(handle, flush_interval_s=flush_interval_s)
        access_log._owned = handle
        return access_log

    def format(self, r: RequestRecord) -> str:
        """The line for ``r``, newline included."""
        if r.reporter == Reporter.DESTINATION:
            downstream_peer, upstream_peer = _peer(r.peer.key[2]), "null"
        else:
            downstream_peer, upstream_peer = "null", _peer(r.peer.key[2])
        service_time = r.upstream_service_time_ms
        return (
            f'{{"authority":{_s(r.authority)},'
            f'"bytes_received":{int(r.request_bytes)},'
            f'"bytes_sent":{int(r.response_bytes)},'
            f'"connection_security_policy":{_s(str(r.connection_security_policy))},'
            f'"downstream_local_address":{_s(r.downstream_local_address)},'
            f'"downstream_peer_uri_san":{downstream_peer},'
            f'"downstream_remote_address":{_s(r.downstream_remote_address)},'
            f'"duration":{int(r.duration_ms)},'
            f'"method":{_s(r.method)},'
            f'"path":{_s(r.path)},'
            f'"protocol":{_s(r.protocol)},'
            f'"request_id":{_s(r.request_id)},'
            f'"requested_server_name":{_s(r.requested_server_name)},'
            f'"response_code":{int(r.response_code)},'
            f'"response_code_details":{_s(r.response_code_details)},'
            f'"response_flags":{_s(str(r.response_flags))},'
            f'"route_name":{_s(r.route_name)},'
            f'"start_time":{self._start_time(r.start_time)},'
            f'"upstream_cluster":{_s(r.upstream_cluster)},'
            f'"upstream_host":{_s(r.upstream_host)},'
            f'"upstream_local_address":{_s(r.upstream_local_address)},'
            f'"upstream_peer_uri_san":{upstream_peer},'
            f'"upstream_request_attempt_count":{int(r.upstream_request_attempts)},'
            f'"upstream_service_time":{"null" if service_time is None else int(service_time)},'
            f'"upstream_transport_failure_reason":{_s(r.upstream_transport_failure_reason)},'
            f'"user_agent":{_s(r.user_agent)},'
            f'"x_forwarded_for":{_s(r.x_forwarded_for)}}}\n'
        )

    def write(self, r: RequestRecord) -> None:
        """Write the line for ``r`` (one ``write`` call); flush if the interval passed."""
        try:
            self.stream.write(self.format(r))
            self.lines += 1
            now = self._clock()
            if now - self._flushed_at >= self.flush_interval_s:
                self._flushed_at = now
                self.stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self._failed(exc)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError) as exc:
            self._failed(exc)
        self._flushed_at = self._clock()

    def close(self) -> None:
        """Flush, and close the file if :meth:`to_path` opened it."""
        self.flush()
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> AccessLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:  # once: a full disk must not turn into a log line per request
            log.warning(
                "the access log cannot be written (%s); lines are being dropped and counted "
                "in mesh_sidecar_access_log_write_errors_total. Check the disk or the "
                "process reading the sidecar's output",
                exc,
            )

    def _start_time(self, ts: float) -> str:
        """``"2026-05-09T07:35:25.123Z"`` (UTC, milliseconds), as Envoy's START_TIME."""
        if ts <= 0:
            return "null"
        second, ms = divmod(round(ts * 1000), 1000)
        if second != self._second:  # strftime once per second, not per request
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f'"{self._second_text}.{ms:03d}Z"'
