"""Per-endpoint keep-alive pools of upstream connections, plaintext or mesh mTLS.

:meth:`Pools.acquire` hands out an idle connection to ``host:port`` or makes a new one;
after an exchange the caller gives it back with :meth:`Pools.release` (it is kept only
when the exchange left it reusable) or drops it with :meth:`Upstream.close`.

mTLS (identity contract, :mod:`sidecar.identity`): every NEW connection takes
``identity.current.value`` and its ``client_context``, handshakes, and checks the
server's SPIFFE ID against the identities the cluster expects (``check_peer``). A
pooled connection is reused only while the identity that made it is valid (never past
its ``not_after``) and only for a cluster that expects the peer it proved. The last TLS
session of each endpoint is kept so the next new connection resumes it (an abbreviated
handshake, about 2.5x cheaper) while it was made with the same context.

Idle connections are checked before reuse without waiting (:meth:`alive_when_idle`:
the peer closed it, or sent bytes nobody asked for: drop it), expire after
``idle_timeout_s`` (30 s: shorter than most servers' keep-alive, so the upstream rarely
closes one under us) and are swept by :meth:`Pools.run_sweeper`. Endpoints that left
the config are retired: no new requests, idle connections closed at once, busy ones
closed when their exchange ends.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import trio

from registry.latest import Latest
from sidecar.identity import Identity, PeerIdentityMismatch, check_peer
from sidecar.protocol import ClientConnection, Limits
from sidecar.protocol.limits import DEFAULT_LIMITS
from sidecar.proxy.streams import TcpStream, TlsStream, connect_tcp

log = logging.getLogger("sidecar.proxy")

IDLE_TIMEOUT_S = 30.0
MAX_IDLE_PER_ENDPOINT = 64
SWEEP_INTERVAL_S = 2.0

PoolKey = tuple[str, int, bool]


class ConnectFailure(Exception):
    """No usable connection to the upstream: refused, unreachable, timed out, the TLS
    handshake failed, or the server is not the workload expected. ``reason`` is what
    the access log calls the transport failure reason."""

    def __init__(self, reason: str, *, mismatch: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.mismatch = mismatch


class Upstream:
    """One connection to an upstream, with its HTTP/1.1 client state."""

    __slots__ = (
        "address",
        "conn",
        "expires",
        "idle_since",
        "peer",
        "pool",
        "reused",
        "stream",
    )

    def __init__(
        self,
        stream: TcpStream | TlsStream,
        pool: EndpointPool,
        peer: str | None,
        expires: float,
        limits: Limits,
    ) -> None:
        self.stream = stream
        self.pool = pool
        self.peer = peer
        self.expires = expires
        self.conn = ClientConnection(limits)
        self.idle_since = 0.0
        self.reused = False
        self.address = f"{pool.key[0]}:{pool.key[1]}"

    def close(self) -> None:
        self.stream.close()

    @property
    def secure(self) -> bool:
        return self.pool.key[2]


@dataclass(slots=True, eq=False)
class EndpointPool:
    """The idle connections of one endpoint (newest last: reused first, so the oldest
    age out)."""

    key: PoolKey
    idle: list[Upstream]
    draining: bool = False
    session: ssl.SSLSession | None = None
    session_context: ssl.SSLContext | None = None
    connects: int = 0
    reuses: int = 0


class Pools:
    """Every endpoint's pool. ``identity`` is the workload identity's ``current`` (None
    when this proxy only ever talks plaintext, as the inbound side to the app does)."""

    def __init__(
        self,
        identity: Latest[Identity | None] | None = None,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_idle_per_endpoint: int = MAX_IDLE_PER_ENDPOINT,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.idle_timeout_s = idle_timeout_s
        self.max_idle = max_idle_per_endpoint
        self.limits = limits
        self._clock = clock
        self._pools: dict[PoolKey, EndpointPool] = {}

    # --- checkout / checkin ---------------------------------------------------------------

    def _pool(self, key: PoolKey) -> EndpointPool:
        pool = self._pools.get(key)
        if pool is None or pool.draining:
            pool = self._pools[key] = EndpointPool(key, [])
        return pool

    def take_idle(
        self, host: str, port: int, secure: bool, expected: Collection[str] = ()
    ) -> Upstream | None:
        """An idle connection that may carry a request now, or None."""
        pool = self._pools.get((host, port, secure))
        if pool is None or pool.draining:
            return None
        idle = pool.idle
        now = self._clock()
        while idle:
            up = idle.pop()
            if (
                now < up.expires
                and now - up.idle_since < self.idle_timeout_s
                and (not secure or up.peer in expected)
                and up.stream.alive_when_idle()
            ):
                up.reused = True
                pool.reuses += 1
                return up
            up.close()
        return None

    async def acquire(
        self,
        host: str,
        port: int,
        *,
        secure: bool,
        expected: Collection[str] = (),
        connect_timeout_s: float = 10.0,
    ) -> Upstream:
        """A connection to ``host:port``: pooled when one is idle, else new. ``secure``:
        mesh mTLS, the server's SPIFFE ID one of ``expected``. Raises
        :class:`ConnectFailure` (the connect and the handshake are both bounded by
        ``connect_timeout_s``)."""
        up = self.take_idle(host, port, secure, expected)
        if up is not None:
            return up
        return await self.connect(host, port, secure=secure, expected=expected,
                                  connect_timeout_s=connect_timeout_s)  # fmt: skip

    async def connect(
        self,
        host: str,
        port: int,
        *,
        secure: bool,
        expected: Collection[str] = (),
        connect_timeout_s: float = 10.0,
    ) -> Upstream:
        """A new connection (Upgrade and CONNECT tunnels take one of their own)."""
        pool = self._pool((host, port, secure))
        identity: Identity | None = None
        if secure:
            identity = self.identity.value if self.identity is not None else None
            if identity is None:
                raise ConnectFailure("this sidecar has no certificate yet")
        tcp: TcpStream | None = None
        with trio.move_on_after(connect_timeout_s) as scope:
            try:
                tcp = await connect_tcp(host, port)
                if identity is None:
                    pool.connects += 1
                    return Upstream(tcp, pool, None, float("inf"), self.limits)
                context = identity.client_context
                session = pool.session if pool.session_context is context else None
                tls = TlsStream.client(tcp, context, session)
                await tls.do_handshake()
                try:
                    peer = str(check_peer(tls, expected))
                except PeerIdentityMismatch as exc:
                    tls.close()
                    raise ConnectFailure(f"peer identity mismatch: {exc}", mismatch=True) from exc
                pool.connects += 1
                remaining = identity.not_after.timestamp() - time.time()
                return Upstream(tls, pool, peer, self._clock() + remaining, self.limits)
            except OSError as exc:
                raise ConnectFailure(f"connection failure: {exc.strerror or exc}") from exc
            except trio.BrokenResourceError as exc:
                if tcp is not None:
                    tcp.close()
                raise ConnectFailure(f"TLS error: {exc}") from exc
            except BaseException:
                if tcp is not None:
                    tcp.close()
                raise
        if tcp is not None:
            tcp.close()
        assert scope.cancelled_caught
        raise ConnectFailure(f"connection timeout ({connect_timeout_s:g} s)")

    def release(self, up: Upstream) -> None:
        """Give back a connection whose exchange ended with keep-alive; anything else
        (or a draining endpoint, or a full pool) closes it."""
        pool = up.pool
        if pool.draining or up.stream.closed or len(pool.idle) >= self.max_idle:
            up.close()
            return
        stream = up.stream
        if type(stream) is TlsStream and pool.session is None:
            session = stream.session
            if session is not None and session.has_ticket:
                pool.session = session
                pool.session_context = stream.context
        try:
            up.conn.start_next_cycle()
        except Exception:  # a stray response byte already buffered: never reuse
            up.close()
            return
        up.idle_since = self._clock()
        pool.idle.append(up)

    # --- housekeeping -----------------------------------------------------------------------

    def retire(self, keep: Collection[tuple[str, int]]) -> int:
        """Drain the pools of endpoints not in ``keep`` (``(host, port)``): their idle
        connections close now, busy ones when released. Returns how many pools."""
        retired = 0
        for key, pool in list(self._pools.items()):
            if (key[0], key[1]) in keep:
                continue
            pool.draining = True
            for up in pool.idle:
                up.close()
            pool.idle.clear()
            del self._pools[key]
            retired += 1
        return retired

    def sweep(self) -> int:
        """Close idle connections past their idle timeout or identity; returns how many."""
        now = self._clock()
        closed = 0
        for pool in self._pools.values():
            keep = []
            for up in pool.idle:
                if now - up.idle_since >= self.idle_timeout_s or now >= up.expires:
                    up.close()
                    closed += 1
                else:
                    keep.append(up)
            pool.idle[:] = keep
        return closed

    async def run_sweeper(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        while True:
            await trio.sleep(interval_s)
            self.sweep()

    def close_all(self) -> None:
        for pool in self._pools.values():
            pool.draining = True
            for up in pool.idle:
                up.close()
            pool.idle.clear()
        self._pools.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        """``host:port`` -> idle connections, connects and reuses (admin, tests)."""
        out: dict[str, dict[str, int]] = {}
        for (host, port, secure), pool in self._pools.items():
            name = f"{host}:{port}{' (mtls)' if secure else ''}"
            out[name] = {"idle": len(pool.idle), "connects": pool.connects, "reuses": pool.reuses}
        return out
