"""The events of an HTTP/1.1 connection: what ``receive_data`` returns and ``send`` takes.

One message is a head (:class:`Request`, :class:`Response`), any number of :class:`Data`,
then :class:`EndOfMessage`; a server may send :class:`InformationalResponse` heads (1xx)
before its final response. :class:`ConnectionClosed` is the peer's end of stream between
messages (or ours, passed to ``send``). Events are frozen and slotted; their ``headers``
are :class:`~sidecar.protocol.headers.Headers`, which validates fields as it is built
(``Headers([(b"x-a", b"1")])``). Field types are enforced when the module is compiled
(``TypeError``), so a list where ``Headers`` belongs fails at once rather than on send.

``http_version`` is ``b"1.0"`` or ``b"1.1"`` on received heads; heads we send are always
written as HTTP/1.1 (RFC 9110 §2.5: a sender uses its highest conformant version), so
the field is ignored by ``send``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.protocol.headers import EMPTY, Headers


@dataclass(frozen=True, slots=True)
class Request:
    """A request head. ``target`` is the request-target as sent (origin-form
    ``/path?q``, absolute-form ``http://host/path``, authority-form ``host:port`` for
    CONNECT, or ``*``)."""

    method: bytes
    target: bytes
    headers: Headers = EMPTY
    http_version: bytes = b"1.1"

    @property
    def expects_continue(self) -> bool:
        """The client waits for ``100 Continue`` before it sends the body
        (``Expect: 100-continue`` on an HTTP/1.1 request)."""
        return (
            self.http_version == b"1.1"
            and self.headers.get(b"expect", b"").lower() == b"100-continue"
        )


@dataclass(frozen=True, slots=True)
class InformationalResponse:
    """A 1xx head: ``100 Continue``, ``101 Switching Protocols`` (after which the
    connection carries another protocol), ``103 Early Hints``..."""

    status: int
    headers: Headers = EMPTY
    reason: bytes = b""
    http_version: bytes = b"1.1"


@dataclass(frozen=True, slots=True)
class Response:
    """A final response head (status 200-599). ``reason`` may be empty; ``send`` then
    writes the standard phrase."""

    status: int
    headers: Headers = EMPTY
    reason: bytes = b""
    http_version: bytes = b"1.1"


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of a message body, in order. Pieces have no meaning of their own: chunk
    boundaries are not kept."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The end of a message's body, with the trailer fields of a chunked body."""

    trailers: Headers = EMPTY


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side of the connection between messages (a clean end); given
    to ``send``, our side closes."""


Event = Request | InformationalResponse | Response | Data | EndOfMessage | ConnectionClosed
"""Anything ``receive_data`` returns or ``send`` takes."""

END_OF_MESSAGE = EndOfMessage()
"""The end of a message without trailers (events are immutable: one serves all)."""

CONNECTION_CLOSED = ConnectionClosed()
