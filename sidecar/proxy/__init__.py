"""The sidecar's data plane: the inbound, outbound and TCP listeners on Trio.

- :mod:`.config` — :class:`ProxyConfig`, compiled once per applied snapshot and swapped
  atomically (:class:`ProxyState`);
- :mod:`.streams` — plain TCP and TLS byte streams (TLS half-close included);
- :mod:`.upstream` — per-endpoint keep-alive pools, plaintext or mesh mTLS;
- :mod:`.exchange` — one HTTP/1.1 request and its response, streaming, with retries
  and timeouts; the request loop of a client connection;
- :mod:`.inbound`, :mod:`.outbound` — the listeners' logic;
- :mod:`.tunnel` — Upgrade/CONNECT and raw TCP relays with half-close;
- :mod:`.forwarding` — hop-by-hop fields, X-Forwarded-*, x-request-id, traceparent;
- :mod:`.report` — every call into telemetry;
- :mod:`.server` — :class:`ProxyServer`: binding, accept loops, idle sweeping, drain.

See docs/sidecar.md ("Proxy") for what an operator sees.
"""

from sidecar.proxy.config import ProxyConfig, ProxyState, compile_config
from sidecar.proxy.errors import ListenError, ProxyError
from sidecar.proxy.report import TelemetrySink
from sidecar.proxy.server import ProxyServer, UpstreamSpec

__all__ = [
    "ListenError",
    "ProxyConfig",
    "ProxyError",
    "ProxyServer",
    "ProxyState",
    "TelemetrySink",
    "UpstreamSpec",
    "compile_config",
]
