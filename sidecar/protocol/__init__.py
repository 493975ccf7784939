"""Sans-IO HTTP/1.1 for the sidecar proxy: bytes in -> events out, events in -> bytes out.

No I/O and no trio here (DESIGN.md: protocol logic is sans-IO, as in h11/h2). The proxy
uses :class:`ServerConnection` towards apps and peers (parse requests, write responses)
and :class:`ClientConnection` towards upstreams (write requests, parse responses). Events
are frozen, slotted dataclasses (:mod:`.events`); states move only through the tables
of :mod:`.states`; errors are :class:`ProtocolError` with a ``status_hint``.

Design, measured (``python -m bench.protocol_bench``; docs/protocol.md has the table):
heads are validated and split by llhttp through httptools, our checks sit on top where
llhttp is lenient, and bodies are framed by us. Against h11 (pure Python) this is 4-5x
faster on every workload: a small GET parses in ~5 µs on a new connection (h11: ~20 µs),
a keep-alive exchange with 1 KiB bodies costs ~8 µs per side (h11: ~42 µs), 64 KiB
chunked bodies move at ~5 GB/s (h11: ~1.1 GB/s). llhttp is not used for whole messages
(that would be faster still, ~1.5-5 µs) because httptools cannot stop at or report the
end of a message, cannot skip a HEAD response's body, and buffers partial header values
beyond any limit; a proxy needs exact message boundaries (pipelining, HEAD, CONNECT,
101 tunnels) and limits enforced before buffering. So the connection finds each head's
end itself, hands exactly that head to a fresh llhttp parser (0.2 µs), and frames bodies
with ``bytes.find`` and one regex per chunk-size line, passing a read that is all body
on without a copy.

Strict by default: request smuggling shapes (CL+TE, duplicate or malformed
Content-Length, Transfer-Encoding other than exactly ``chunked``), bad chunk framing,
obs-fold, bare LF, invalid bytes, odd request lines and versions are refused with
400/501/505 (502 for an upstream's response); see docs/protocol.md for the full table
and which checks are llhttp's and which are ours.
"""

from __future__ import annotations

from sidecar.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from sidecar.protocol.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    Request,
    Response,
)
from sidecar.protocol.headers import EMPTY, Headers
from sidecar.protocol.http1 import ClientConnection, ServerConnection
from sidecar.protocol.limits import DEFAULT_LIMITS, Limits
from sidecar.protocol.states import (
    CLOSED,
    DONE,
    ERROR,
    IDLE,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    SEND_BODY,
    SEND_RESPONSE,
    SWITCHED_PROTOCOL,
    State,
)

__all__ = [
    "CLOSED",
    "DEFAULT_LIMITS",
    "DONE",
    "EMPTY",
    "ERROR",
    "IDLE",
    "MIGHT_SWITCH_PROTOCOL",
    "MUST_CLOSE",
    "SEND_BODY",
    "SEND_RESPONSE",
    "SWITCHED_PROTOCOL",
    "ClientConnection",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "Headers",
    "InformationalResponse",
    "Limits",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "ServerConnection",
    "State",
]
