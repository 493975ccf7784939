"""Headers: immutable ordered pairs, validated when built by hand, fast lookups."""

from __future__ import annotations

import pytest

from sidecar.protocol import EMPTY, Headers, LocalProtocolError


def test_built_by_hand_lowercases_and_trims() -> None:
    headers = Headers([("Host", "svc"), (b"X-A", b"  1 \t"), (b"X-A", bytearray(b"2"))])  # type: ignore[list-item]
    assert list(headers) == [(b"host", b"svc"), (b"x-a", b"1"), (b"x-a", b"2")]
    assert headers.fields == ((b"host", b"svc"), (b"x-a", b"1"), (b"x-a", b"2"))
    assert len(headers) == 3
    assert headers[0] == (b"host", b"svc")
    assert headers[1:] == [(b"x-a", b"1"), (b"x-a", b"2")]
    assert isinstance(headers[1:], Headers)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        (b"x a", b"1", "token"),
        (b"", b"1", "token"),
        (b"x:", b"1", "token"),
        (b"x\r\ny", b"1", "token"),
        (b"x", b"1\r\nInjected: yes", "control"),
        (b"x", b"1\nInjected: yes", "control"),
        (b"x", b"a\x00b", "control"),
        (b"x", b"a\x7fb", "control"),
        ("x", "caf\u00e9", "ASCII"),
        (b"x", 1, "bytes or str"),
    ],
)
def test_invalid_fields_are_refused(name: object, value: object, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        Headers([(name, value)])  # type: ignore[list-item]


def test_lookups() -> None:
    headers = Headers([(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])
    assert headers.get(b"a") == b"1"
    assert headers.get(b"A") == b"1"
    assert headers.get(b"c") is None
    assert headers.get(b"c", b"dflt") == b"dflt"
    assert headers.contains(b"B")
    assert not headers.contains(b"c")
    assert headers.get_all(b"a") == [b"1", b"3"]
    assert headers.get_all(b"c") == []
    assert (b"b", b"2") in headers


def test_tokens() -> None:
    headers = Headers([(b"connection", b"Keep-Alive, , Upgrade"), (b"connection", b"X-Hop")])
    assert headers.get_tokens(b"Connection") == [b"keep-alive", b"upgrade", b"x-hop"]


def test_new_headers_from_old() -> None:
    headers = Headers([(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])
    assert headers.with_added("C", "4") == [(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"4")]
    assert headers.with_set(b"a", b"9") == [(b"a", b"9"), (b"b", b"2")]
    assert headers.with_set(b"z", b"9")[-1] == (b"z", b"9")
    assert headers.without(b"A") == [(b"b", b"2")]
    assert headers.without(b"zz") is headers
    assert headers == [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]  # unchanged
    with pytest.raises(LocalProtocolError):
        headers.with_added(b"x", b"\r\n")


def test_equality_and_hash() -> None:
    one = Headers([(b"a", b"1")])
    assert one == Headers([("A", "1")])
    assert one == ((b"a", b"1"),)
    assert one != Headers([(b"a", b"2")])
    assert one != "a: 1"
    assert hash(one) == hash(Headers([(b"a", b"1")]))
    assert {one: 1}[Headers([(b"a", b"1")])] == 1
    assert EMPTY == Headers() == []
    assert not EMPTY
    assert repr(one) == "Headers([(b'a', b'1')])"
