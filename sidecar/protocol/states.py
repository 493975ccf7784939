"""The states of an HTTP/1.1 connection and the tables that move them.

A connection has two state machines, one per role: the CLIENT's (the side that sends
requests) and the SERVER's. A :class:`~sidecar.protocol.http1.ServerConnection` reports
the client's as ``their_state`` and the server's as ``our_state``; a
:class:`~sidecar.protocol.http1.ClientConnection` the other way round.

Every change of state is a lookup in :data:`CLIENT_TRANSITIONS` or
:data:`SERVER_TRANSITIONS`, keyed by ``(state, event type)``. Besides the wire events
three markers drive them: :class:`SwitchAccepted` and :class:`SwitchDeclined` (the
server's answer to an Upgrade or CONNECT request) and :class:`NextCycle`
(``start_next_cycle()``). Two rules follow every event (:meth:`ConnectionState.settle`):
a client that is DONE after proposing a protocol switch MIGHT_SWITCH_PROTOCOL, and with
keep-alive off a role that is DONE MUST_CLOSE.

Life of a keep-alive exchange::

    client  IDLE -Request-> SEND_BODY -Data*-> -EndOfMessage-> DONE --NextCycle--> IDLE
    server  IDLE -(client's Request)-> SEND_RESPONSE -InformationalResponse*->
            -Response-> SEND_BODY -Data*-> -EndOfMessage-> DONE --NextCycle--> IDLE
"""

from __future__ import annotations

from typing import Final, final

from sidecar.protocol.errors import LocalProtocolError
from sidecar.protocol.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    Request,
    Response,
)


@final
class State:
    """One state of a role (compared by identity; hashed in C)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


IDLE: Final = State("IDLE")
"""Between messages: nothing of the next message sent yet."""
SEND_RESPONSE: Final = State("SEND_RESPONSE")
"""Server only: a request arrived, no final response head sent yet (1xx may be)."""
SEND_BODY: Final = State("SEND_BODY")
"""The head is out; body data and the end of the message follow."""
DONE: Final = State("DONE")
"""The message is complete; waiting for the other role (then ``start_next_cycle``)."""
MUST_CLOSE: Final = State("MUST_CLOSE")
"""The message is complete and the connection will not be reused: close it."""
CLOSED: Final = State("CLOSED")
"""This role closed its side of the connection."""
MIGHT_SWITCH_PROTOCOL: Final = State("MIGHT_SWITCH_PROTOCOL")
"""Client only: its Upgrade or CONNECT request is complete; the server's answer decides."""
SWITCHED_PROTOCOL: Final = State("SWITCHED_PROTOCOL")
"""The connection carries another protocol (a tunnel): bytes are no longer HTTP/1.1."""
ERROR: Final = State("ERROR")
"""This role broke the protocol; the connection must be closed."""


@final
class Role:
    """CLIENT or SERVER."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CLIENT: Final = Role("CLIENT")
SERVER: Final = Role("SERVER")


@final
class SwitchAccepted:
    """Marker: the server accepted the proposed switch (101, or 2xx to CONNECT)."""


@final
class SwitchDeclined:
    """Marker: the server answered the proposed switch with an ordinary final response."""


@final
class NextCycle:
    """Marker: ``start_next_cycle()`` after a keep-alive exchange."""


Transitions = dict[tuple[State, type], State]

CLIENT_TRANSITIONS: Final[Transitions] = {
    (IDLE, Request): SEND_BODY,
    (SEND_BODY, Data): SEND_BODY,
    (SEND_BODY, EndOfMessage): DONE,
    (MIGHT_SWITCH_PROTOCOL, SwitchAccepted): SWITCHED_PROTOCOL,
    (MIGHT_SWITCH_PROTOCOL, SwitchDeclined): DONE,
    (DONE, NextCycle): IDLE,
    (IDLE, ConnectionClosed): CLOSED,
    (DONE, ConnectionClosed): CLOSED,
    (MUST_CLOSE, ConnectionClosed): CLOSED,
    (MIGHT_SWITCH_PROTOCOL, ConnectionClosed): CLOSED,
    (CLOSED, ConnectionClosed): CLOSED,
}
"""How the client's state follows the client's events."""

SERVER_TRANSITIONS: Final[Transitions] = {
    # The client's Request is the one event that moves the other role too.
    (IDLE, Request): SEND_RESPONSE,
    # A response to no request: 400 after bytes that were no request, 408 on idle.
    (IDLE, Response): SEND_BODY,
    (SEND_RESPONSE, InformationalResponse): SEND_RESPONSE,
    (SEND_RESPONSE, Response): SEND_BODY,
    (SEND_RESPONSE, SwitchAccepted): SWITCHED_PROTOCOL,
    (SEND_BODY, Data): SEND_BODY,
    (SEND_BODY, EndOfMessage): DONE,
    (DONE, NextCycle): IDLE,
    (IDLE, ConnectionClosed): CLOSED,
    (SEND_RESPONSE, ConnectionClosed): CLOSED,
    (DONE, ConnectionClosed): CLOSED,
    (MUST_CLOSE, ConnectionClosed): CLOSED,
    (CLOSED, ConnectionClosed): CLOSED,
}
"""How the server's state follows the server's events (and the client's Request)."""


class ConnectionState:
    """Both roles' states, keep-alive, and a pending protocol switch.

    ``process`` raises :class:`LocalProtocolError` for an event the table does not allow
    in the role's state; the connection classes turn a peer's impossible event into a
    :class:`~sidecar.protocol.errors.RemoteProtocolError` before it gets here.
    """

    __slots__ = ("client", "keep_alive", "server", "switch_proposed")

    def __init__(self) -> None:
        self.client: State = IDLE
        self.server: State = IDLE
        self.keep_alive = True
        self.switch_proposed = False

    def process(self, role: Role, event_type: type) -> None:
        """Apply ``role``'s event of ``event_type``, then the state-triggered rules
        (which only a role reaching DONE can trigger)."""
        if role is CLIENT:
            new = CLIENT_TRANSITIONS.get((self.client, event_type))
            if new is None:
                raise _refused(role, self.client, event_type)
            if event_type is Request:
                server = SERVER_TRANSITIONS.get((self.server, Request))
                if server is None:
                    raise _refused(SERVER, self.server, event_type)
                self.server = server
            self.client = new
        else:
            new = SERVER_TRANSITIONS.get((self.server, event_type))
            if new is None:
                raise _refused(role, self.server, event_type)
            self.server = new
        if new is DONE:
            self.settle()

    def can(self, role: Role, event_type: type) -> bool:
        """Whether ``role`` may send an event of ``event_type`` now."""
        if role is CLIENT:
            return (self.client, event_type) in CLIENT_TRANSITIONS
        return (self.server, event_type) in SERVER_TRANSITIONS

    def propose_switch(self) -> None:
        """The client's request asks for Upgrade or CONNECT."""
        self.switch_proposed = True
        self.settle()

    def accept_switch(self) -> None:
        """The server answered 101, or 2xx to CONNECT: both roles switch protocol."""
        self.process(SERVER, SwitchAccepted)
        self.process(CLIENT, SwitchAccepted)

    def decline_switch(self) -> None:
        """The server answered with an ordinary final response."""
        self.switch_proposed = False
        if self.client is MIGHT_SWITCH_PROTOCOL:
            self.process(CLIENT, SwitchDeclined)

    def disable_keep_alive(self) -> None:
        self.keep_alive = False
        self.settle()

    def error(self, role: Role) -> None:
        """``role`` broke the protocol."""
        self.keep_alive = False
        if role is CLIENT:
            self.client = ERROR
        else:
            self.server = ERROR
        self.settle()

    def start_next_cycle(self) -> None:
        """Both roles DONE with keep-alive on: back to IDLE for the next exchange."""
        if not (self.client is DONE and self.server is DONE and self.keep_alive):
            raise LocalProtocolError(
                f"start_next_cycle needs both sides DONE with keep-alive; the client is "
                f"{self.client!r}, the server {self.server!r}, keep-alive {self.keep_alive}"
            )
        self.process(CLIENT, NextCycle)
        self.process(SERVER, NextCycle)

    def settle(self) -> None:
        """The state-triggered rules (a fixed point after each event)."""
        if self.switch_proposed and self.client is DONE:
            self.client = MIGHT_SWITCH_PROTOCOL
        if not self.keep_alive:
            if self.client is DONE:
                self.client = MUST_CLOSE
            if self.server is DONE:
                self.server = MUST_CLOSE


def _refused(role: Role, state: State, event_type: type) -> LocalProtocolError:
    return LocalProtocolError(f"the {role!r} can't send {event_type.__name__} while {state!r}")
