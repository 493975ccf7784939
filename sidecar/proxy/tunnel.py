"""Byte tunnels: after a 101 (Upgrade, WebSocket), a 2xx to CONNECT, and every TCP
connection of a TCP listener. Both directions run at once; when one side ends its
stream, the other side's write half is shut (``send_eof``: a TCP ``shutdown`` or a TLS
``close_notify``) and the other direction carries on until it ends too. A connection
that fails (reset, TLS error) ends both directions at once. Where both sides are
plaintext TCP (Linux), a burst of bulk data moves socket -> pipe -> socket in the kernel
(``splice``), never through Python.

A tunnel idle in both directions for ``idle_timeout_s`` is closed (Envoy's TCP proxy
default: one hour).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from sidecar.proxy.streams import CAN_SPLICE, RECV_SIZE, Stream, TcpStream, splice

__all__ = ["TCP_REPORT_EVERY_S", "TUNNEL_IDLE_TIMEOUT_S", "relay"]

TUNNEL_IDLE_TIMEOUT_S = 3600.0
TCP_REPORT_EVERY_S = 5.0
"""How often a TCP tunnel's byte counts reach the metrics while it is open (Istio's
proxy reports every 5 s), so long-lived connections show traffic before they close."""


async def relay(
    a: Stream,
    b: Stream,
    *,
    a_first: bytes = b"",
    b_first: bytes = b"",
    idle_timeout_s: float = TUNNEL_IDLE_TIMEOUT_S,
    progress: Callable[[int, int], None] | None = None,
    report_every_s: float = TCP_REPORT_EVERY_S,
) -> tuple[int, int]:
    """Copy ``a`` -> ``b`` and ``b`` -> ``a`` until both directions have ended (or one
    failed, or the tunnel idled out), then close both. ``a_first``/``b_first``: bytes
    already read from ``a``/``b`` (the ``trailing_data`` of a protocol switch), sent
    first. Returns the bytes copied ``a`` -> ``b`` and ``b`` -> ``a`` — those not yet
    passed to ``progress``, which (when given) gets what was copied each way every
    ``report_every_s`` while the tunnel is open (nothing when nothing moved)."""
    counts = [0, 0]
    reported = [0, 0]
    scope = trio.CancelScope(deadline=trio.current_time() + idle_timeout_s)

    def moved(index: int, n: int) -> None:
        counts[index] += n
        scope.deadline = trio.current_time() + idle_timeout_s

    async def pump(src: Stream, dst: Stream, first: bytes, index: int) -> None:
        try:
            if first:
                await dst.send_all(first)
                counts[index] += len(first)
            kernel = (
                (src, dst)
                if CAN_SPLICE and type(src) is TcpStream and type(dst) is TcpStream
                else None
            )
            while True:
                data = await src.receive_some(RECV_SIZE)
                if not data:
                    break
                await dst.send_all(data)
                moved(index, len(data))
                # A full read is bulk data: the rest of the burst moves in the kernel,
                # while small exchanges stay on two system calls each.
                if (
                    kernel is not None
                    and len(data) == RECV_SIZE
                    and await splice(*kernel, lambda n: moved(index, n))
                ):
                    break  # the end of src's stream
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()  # one side failed: the tunnel is over in both directions

    async def report(progress: Callable[[int, int], None]) -> None:
        while True:
            await trio.sleep(report_every_s)
            ahead = counts[0] - reported[0], counts[1] - reported[1]
            if ahead != (0, 0):
                reported[:] = counts
                progress(*ahead)

    try:
        with scope:
            async with trio.open_nursery() as reporting:
                if progress is not None:
                    reporting.start_soon(report, progress)
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(pump, b, a, b_first, 1)
                    await pump(a, b, a_first, 0)
                reporting.cancel_scope.cancel()
    finally:
        a.close()
        b.close()
    return counts[0] - reported[0], counts[1] - reported[1]
