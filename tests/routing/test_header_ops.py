"""apply_header_ops: set replaces, add appends, remove deletes; levels in Envoy's order."""

from __future__ import annotations

import pytest

from meshd.compile import snapshot as s
from sidecar.routing import HeaderEdits, apply_header_ops, compile_header_ops

BASE = [("Host", "svc"), ("X-A", "1"), ("x-a", "2"), ("Cookie", "c=1")]


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        (s.HeaderOps(), BASE),
        # set replaces every value of the header, whatever its case
        (
            s.HeaderOps(set=(("x-a", "9"),)),
            [("Host", "svc"), ("Cookie", "c=1"), ("x-a", "9")],
        ),
        # set of a header that is not there adds it
        (s.HeaderOps(set=(("x-new", "v"),)), [*BASE, ("x-new", "v")]),
        # add appends, even when the header is there
        (s.HeaderOps(add=(("x-a", "3"),)), [*BASE, ("x-a", "3")]),
        # remove deletes every value
        (s.HeaderOps(remove=("x-a", "cookie")), [("Host", "svc")]),
        (s.HeaderOps(remove=("absent",)), BASE),
        # within a level: remove, then set, then add
        (
            s.HeaderOps(set=(("x-a", "s"),), add=(("x-a", "a"),), remove=("host",)),
            [("Cookie", "c=1"), ("x-a", "s"), ("x-a", "a")],
        ),
    ],
)
def test_apply(ops: s.HeaderOps, expected: list[tuple[str, str]]) -> None:
    assert apply_header_ops(BASE, ops) == expected
    assert apply_header_ops(BASE, compile_header_ops(ops)) == expected


def test_levels_apply_in_order_so_the_route_level_wins() -> None:
    destination = s.HeaderOps(set=(("x-who", "destination"),), add=(("x-d", "1"),))
    route_level = s.HeaderOps(set=(("x-who", "route"),), remove=("x-d",))
    edits = compile_header_ops(destination, route_level)
    assert apply_header_ops([("X-Who", "client")], edits) == [("x-who", "route")]


def test_input_is_not_modified_and_empty_ops_compile_to_nothing() -> None:
    headers = list(BASE)
    apply_header_ops(headers, s.HeaderOps(remove=("x-a",)))
    assert headers == BASE
    assert compile_header_ops(s.HeaderOps(), s.HeaderOps()) == HeaderEdits()
    assert HeaderEdits().empty
    assert not compile_header_ops(s.HeaderOps(add=(("a", "b"),))).empty
