"""Errors of the proxy: what stops it from serving (a port it cannot listen on).
Failures of single connections and requests are never raised out of the proxy: they
are answered (4xx/5xx), counted, and reported to telemetry."""

from __future__ import annotations

from sidecar.errors import SidecarError


class ProxyError(SidecarError):
    """The proxy cannot run."""


class ListenError(ProxyError):
    """A listener cannot bind its address and port (in use, not permitted)."""
