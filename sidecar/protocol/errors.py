"""Errors of the HTTP/1.1 layer.

Every error carries ``status_hint``, the status a proxy should answer with, and
``reason``, a sentence saying what was wrong. The connection that raised one is no
longer usable for another message: the peer's state (for a
:class:`RemoteProtocolError`) or ours (for a :class:`LocalProtocolError`) becomes
``ERROR`` and ``keep_alive`` turns false.
"""

from __future__ import annotations

from sidecar.errors import SidecarError


class ProtocolError(SidecarError):
    """An HTTP/1.1 message that cannot be accepted.

    ``status_hint`` is the status to answer with: 400, 413, 414, 417, 431, 501, 505
    for a bad request; 502 for a bad response from an upstream; 500 for a message we
    were asked to send that is not valid HTTP/1.1.
    """

    def __init__(self, status_hint: int, reason: str) -> None:
        super().__init__(f"{status_hint}: {reason}")
        self.status_hint = status_hint
        self.reason = reason


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid (or not an acceptable) HTTP/1.1 message.

    On a server connection answer ``status_hint`` (see ``ServerConnection.send_error``)
    and close; on a client connection the upstream's answer must not be forwarded:
    answer 502 and close the upstream connection.
    """


class LocalProtocolError(ProtocolError):
    """We were asked to send something invalid, or to act in the wrong state (a bug in
    the caller, never the peer's fault). ``status_hint`` is 500."""

    def __init__(self, reason: str, status_hint: int = 500) -> None:
        super().__init__(status_hint, reason)
