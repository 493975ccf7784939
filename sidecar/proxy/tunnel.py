"""Byte tunnels: after a 101 (Upgrade, WebSocket), a 2xx to CONNECT, and every TCP
connection of a TCP listener. Both directions run at once; when one side ends its
stream, the other side's write half is shut (``send_eof``: a TCP ``shutdown`` or a TLS
``close_notify``) and the other direction carries on until it ends too. A connection
that fails (reset, TLS error) ends both directions at once.

A tunnel idle in both directions for ``idle_timeout_s`` is closed (Envoy's TCP proxy
default: one hour).
"""

from __future__ import annotations

import trio

from sidecar.proxy.streams import RECV_SIZE, Stream

__all__ = ["TUNNEL_IDLE_TIMEOUT_S", "relay"]

TUNNEL_IDLE_TIMEOUT_S = 3600.0


async def relay(
    a: Stream,
    b: Stream,
    *,
    a_first: bytes = b"",
    b_first: bytes = b"",
    idle_timeout_s: float = TUNNEL_IDLE_TIMEOUT_S,
) -> tuple[int, int]:
    """Copy ``a`` -> ``b`` and ``b`` -> ``a`` until both directions have ended (or one
    failed, or the tunnel idled out), then close both. ``a_first``/``b_first``: bytes
    already read from ``a``/``b`` (the ``trailing_data`` of a protocol switch), sent
    first. Returns the bytes copied ``a`` -> ``b`` and ``b`` -> ``a``."""
    counts = [0, 0]
    scope = trio.CancelScope(deadline=trio.current_time() + idle_timeout_s)

    async def pump(src: Stream, dst: Stream, first: bytes, index: int) -> None:
        try:
            if first:
                await dst.send_all(first)
                counts[index] += len(first)
            while True:
                data = await src.receive_some(RECV_SIZE)
                if not data:
                    break
                await dst.send_all(data)
                counts[index] += len(data)
                scope.deadline = trio.current_time() + idle_timeout_s
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()  # one side failed: the tunnel is over in both directions

    try:
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, b, a, b_first, 1)
                await pump(a, b, a_first, 0)
    finally:
        a.close()
        b.close()
    return counts[0], counts[1]
