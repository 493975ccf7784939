"""Typed errors of the sidecar.

Every error says what failed, why, and what to do next. Foreign exceptions (OSError,
ssl, json) are translated at the edge: ``raise ControlPlaneUnavailable(...) from exc``.
``mesh-sidecar`` exits 2 on a :class:`ConfigError` (fix the flags) and 1 on any other
:class:`SidecarError`.
"""

from __future__ import annotations

from collections.abc import Sequence


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """A flag or ``MESH_*`` variable is missing or invalid."""


class StateError(SidecarError):
    """The state directory (saved config, instance id) cannot be read or written."""


class AdminServerError(SidecarError):
    """The admin server cannot listen (its port is taken, for one)."""


class HttpClientError(SidecarError):
    """A request of the sidecar's own HTTP client (:mod:`sidecar.http_client`: to meshd,
    to the local Consul agent) got no usable answer. ``method`` and ``url`` name the
    request; ``reason`` says why, as the OS, the TLS library or the parser put it. The
    class names follow httpx's, which the sidecar used before: log lines read the same."""

    def __init__(self, method: str, url: str, reason: str) -> None:
        super().__init__(f"{method} {url}: {reason}")
        self.method = method
        self.url = url
        self.reason = reason


class ConnectError(HttpClientError):
    """No connection: refused, unreachable, a name that does not resolve."""


class TlsError(ConnectError):
    """The TLS handshake failed: the server's certificate did not verify (the reason then
    holds ``CERTIFICATE_VERIFY_FAILED`` and OpenSSL's why), or the server refused ours."""


class HttpTimeout(HttpClientError):
    """No connection within the connect timeout, or no complete answer within the
    request's timeout."""


class ConnectionLost(HttpClientError):
    """The connection broke (reset, closed) before the whole answer had come."""


class MalformedResponse(HttpClientError):
    """The answer is not valid HTTP/1.1, or larger than the client takes."""


class ControlPlaneError(SidecarError):
    """A request to meshd failed. ``status`` is the HTTP status (None when no answer
    came), ``detail`` meshd's explanation (the problem document's ``detail``)."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class ControlPlaneUnavailable(ControlPlaneError):
    """meshd could not be reached or could not answer (refused, timeout, 5xx). Retrying
    later may succeed; the sidecar keeps serving its last good config meanwhile."""


class ControlPlaneRejected(ControlPlaneError):
    """meshd answered with a client error (401, 403, 400, 422...): the token or the
    instance's flags are wrong. Retrying does not help until they are fixed."""


class InstanceUnknown(ControlPlaneError):
    """meshd does not know this instance (404): it restarted and forgot its in-memory
    catalog, or the instance was deregistered. Register again."""


class InvalidSnapshot(SidecarError):
    """A snapshot the sidecar will not serve. ``errors`` lists every problem found, most
    important first; ``version`` is the snapshot's version when it could be told."""

    def __init__(self, errors: Sequence[str], *, version: str = "") -> None:
        self.errors = tuple(errors) or ("the snapshot is invalid",)
        self.version = version
        super().__init__(self.reason())

    def reason(self, limit: int = 5) -> str:
        """The first ``limit`` errors on one line each (what a NACK carries)."""
        shown = list(self.errors[:limit])
        if len(self.errors) > limit:
            shown.append(f"... and {len(self.errors) - limit} more")
        return "\n".join(shown)
