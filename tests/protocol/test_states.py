"""The transition tables and the state-triggered rules."""

from __future__ import annotations

import pytest

from sidecar.protocol import LocalProtocolError
from sidecar.protocol.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    Request,
    Response,
)
from sidecar.protocol.states import (
    CLIENT,
    CLIENT_TRANSITIONS,
    CLOSED,
    DONE,
    ERROR,
    IDLE,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SERVER_TRANSITIONS,
    SWITCHED_PROTOCOL,
    ConnectionState,
    NextCycle,
    State,
    SwitchAccepted,
    SwitchDeclined,
)

# (role, state, event) -> expected next state; None: refused
CASES: list[tuple[str, State, type, State | None]] = [
    ("client", IDLE, Request, SEND_BODY),
    ("client", IDLE, Data, None),
    ("client", IDLE, Response, None),
    ("client", SEND_BODY, Data, SEND_BODY),
    ("client", SEND_BODY, EndOfMessage, DONE),
    ("client", SEND_BODY, Request, None),
    ("client", SEND_BODY, ConnectionClosed, None),
    ("client", DONE, Data, None),
    ("client", DONE, NextCycle, IDLE),
    ("client", DONE, ConnectionClosed, CLOSED),
    ("client", MUST_CLOSE, NextCycle, None),
    ("client", MUST_CLOSE, ConnectionClosed, CLOSED),
    ("client", MIGHT_SWITCH_PROTOCOL, SwitchAccepted, SWITCHED_PROTOCOL),
    ("client", MIGHT_SWITCH_PROTOCOL, SwitchDeclined, DONE),
    ("client", SWITCHED_PROTOCOL, Data, None),
    ("client", ERROR, Request, None),
    ("server", IDLE, Request, SEND_RESPONSE),
    ("server", IDLE, Response, SEND_BODY),
    ("server", IDLE, Data, None),
    ("server", SEND_RESPONSE, InformationalResponse, SEND_RESPONSE),
    ("server", SEND_RESPONSE, Response, SEND_BODY),
    ("server", SEND_RESPONSE, SwitchAccepted, SWITCHED_PROTOCOL),
    ("server", SEND_RESPONSE, Data, None),
    ("server", SEND_BODY, Data, SEND_BODY),
    ("server", SEND_BODY, EndOfMessage, DONE),
    ("server", SEND_BODY, InformationalResponse, None),
    ("server", DONE, NextCycle, IDLE),
    ("server", DONE, ConnectionClosed, CLOSED),
    ("server", SWITCHED_PROTOCOL, Response, None),
]


@pytest.mark.parametrize(("role", "state", "event", "expected"), CASES)
def test_transition_tables(role: str, state: State, event: type, expected: State | None) -> None:
    table = CLIENT_TRANSITIONS if role == "client" else SERVER_TRANSITIONS
    assert table.get((state, event)) is expected


def test_a_request_moves_both_roles() -> None:
    state = ConnectionState()
    state.process(CLIENT, Request)
    assert (state.client, state.server) == (SEND_BODY, SEND_RESPONSE)


def test_refused_event_raises() -> None:
    state = ConnectionState()
    with pytest.raises(LocalProtocolError, match="CLIENT can't send Data while IDLE"):
        state.process(CLIENT, Data)


def exchange(state: ConnectionState) -> None:
    state.process(CLIENT, Request)
    state.process(CLIENT, EndOfMessage)
    state.process(SERVER, Response)
    state.process(SERVER, EndOfMessage)


def test_keep_alive_cycle() -> None:
    state = ConnectionState()
    exchange(state)
    assert (state.client, state.server) == (DONE, DONE)
    state.start_next_cycle()
    assert (state.client, state.server) == (IDLE, IDLE)


def test_without_keep_alive_done_is_must_close() -> None:
    state = ConnectionState()
    state.process(CLIENT, Request)
    state.disable_keep_alive()
    state.process(CLIENT, EndOfMessage)
    assert state.client is MUST_CLOSE
    state.process(SERVER, Response)
    state.process(SERVER, EndOfMessage)
    assert state.server is MUST_CLOSE
    with pytest.raises(LocalProtocolError, match="keep-alive"):
        state.start_next_cycle()


def test_a_proposed_switch() -> None:
    state = ConnectionState()
    state.process(CLIENT, Request)
    state.propose_switch()
    state.process(CLIENT, EndOfMessage)
    assert state.client is MIGHT_SWITCH_PROTOCOL
    state.accept_switch()
    assert (state.client, state.server) == (SWITCHED_PROTOCOL, SWITCHED_PROTOCOL)


def test_a_declined_switch() -> None:
    state = ConnectionState()
    state.process(CLIENT, Request)
    state.propose_switch()
    state.process(CLIENT, EndOfMessage)
    state.process(SERVER, Response)
    state.decline_switch()
    assert state.client is DONE
    assert not state.switch_proposed


def test_error() -> None:
    state = ConnectionState()
    state.process(CLIENT, Request)
    state.error(CLIENT)
    assert state.client is ERROR
    assert not state.keep_alive
    assert state.can(SERVER, Response)
    assert repr(ERROR) == "ERROR"
    assert repr(CLIENT) == "CLIENT"
