"""The proxy's listeners and their lifecycle: bind, accept, track connections, sweep idle
ones, follow the config, drain.

Task tree (all under :meth:`ProxyServer.serve`)::

    serve
    ├── ProxyState.follow      recompiles the config on every applied snapshot;
    │                          endpoints that left it are retired from the pools
    ├── Pools.run_sweeper      closes pooled upstream connections idle > 30 s
    ├── idle sweeper           closes client connections idle > 60 s between requests
    ├── accept loops           one per listening socket, under one cancel scope (drain
    │                          cancels it: the sockets close, nothing new is accepted)
    └── one task per connection (a connection's failure never reaches the listener)

Accept loops back off when ``accept`` fails for lack of descriptors or memory (EMFILE,
ENFILE, ENOBUFS, ENOMEM: DESIGN.md), logging once per episode; errors of one
connection are contained in its task; cancellation is never caught.

Drain (:meth:`ProxyServer.drain`, on SIGTERM): stop accepting, close the client
connections that are idle between requests, let requests in flight finish (their
responses say ``Connection: close``; a request that arrives on a kept-alive connection
meanwhile is answered the same way) until none is left or the deadline passes.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

import trio
from trio.lowlevel import checkpoint, notify_closing, wait_readable

from meshd.compile.snapshot import ProxySnapshot
from registry.latest import Latest
from sidecar.config_store import ConfigStore
from sidecar.identity import Identity
from sidecar.protocol import Limits
from sidecar.proxy.config import ProxyConfig, ProxyState
from sidecar.proxy.errors import ListenError
from sidecar.proxy.exchange import ProxyContext
from sidecar.proxy.inbound import InboundListener
from sidecar.proxy.outbound import OutboundListener, TcpUpstreamListener
from sidecar.proxy.report import TelemetrySink
from sidecar.proxy.streams import TcpStream
from sidecar.proxy.upstream import Pools
from sidecar.settings import UpstreamSpec

log = logging.getLogger("sidecar.proxy")

__all__ = ["ProxyServer", "UpstreamSpec"]

IDLE_TIMEOUT_S = 60.0
IDLE_SWEEP_S = 1.0
DRAIN_TIMEOUT_S = 5.0
BACKLOG = 4096
ACCEPT_RETRY_S = 0.1
ACCEPT_BURST = 32
_CAPACITY = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_TRANSIENT = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR))

ConnectionHandler = Callable[[TcpStream, tuple[str, int]], Awaitable[None]]


def _listen(
    host: str, port: int, what: str, hint: str, *, reuse_port: bool = False
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # --workers: every process binds the same ports; the kernel spreads new
            # connections over their listening sockets.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(
            f"the {what} listener cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}"
        ) from exc
    return sock


class ProxyServer:
    """The inbound, outbound and TCP listeners of one sidecar (see the module
    docstring). ``identity`` is the workload identity's ``current``; ``telemetry`` the
    sink the agent attaches a :class:`~sidecar.telemetry.Telemetry` to."""

    def __init__(
        self,
        state: ProxyState,
        identity: Latest[Identity | None] | None,
        *,
        inbound_host: str = "0.0.0.0",  # noqa: S104 — peers on other hosts reach it
        inbound_port: int = 15006,
        outbound_port: int = 15001,
        upstreams: Sequence[UpstreamSpec] = (),
        app_host: str = "127.0.0.1",
        telemetry: TelemetrySink | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        limits: Limits | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.state = state
        self.identity = identity
        self.inbound_host = inbound_host
        self.inbound_port = inbound_port
        self.outbound_port = outbound_port
        self.upstreams = tuple(upstreams)
        self.app_host = app_host
        self.idle_timeout_s = idle_timeout_s
        self.reuse_port = reuse_port
        self.ctx = ProxyContext(Pools(identity), telemetry, rng=state.rng, limits=limits)
        self.listening = False
        self.ports: dict[str, int] = {}
        self.accept_failures = 0
        self.connection_errors = 0
        self.connections_total = 0
        self._active = 0
        self._idle = trio.Event()
        self._accepting = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._error_logged_at = 0.0
        self.inbound: InboundListener | None = None
        self.outbound: OutboundListener | None = None

    # --- what others read -----------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.ctx.draining

    @property
    def active_connections(self) -> int:
        return self._active

    def not_ready_reason(self) -> str | None:
        """Why the proxy cannot take traffic now (for ``/ready``), or None."""
        if self.ctx.draining:
            return "the proxy is draining"
        if not self.listening:
            return "the proxy listeners are not up yet"
        return None

    def apply(self, snapshot: ProxySnapshot) -> ProxyConfig:
        """Compile ``snapshot`` and swap it in now, as following a store does (a worker
        process of ``--workers`` applies what the main process sends this way, and
        must know whether it compiled). Raises whatever compiling raises; the old
        config stays then."""
        config = self.state.apply(snapshot)
        self._on_swap(config)
        return config

    # --- running ------------------------------------------------------------------------------

    def _bind(self) -> list[tuple[socket.socket, str, ConnectionHandler]]:
        ctx, state = self.ctx, self.state
        bound: list[tuple[socket.socket, str, ConnectionHandler]] = []
        try:
            inbound_sock = _listen(
                self.inbound_host, self.inbound_port, "inbound",
                "choose a free port with --inbound-port (MESH_INBOUND_PORT)",
                reuse_port=self.reuse_port,
            )  # fmt: skip
            bound.append((inbound_sock, "inbound", self._inbound_handler(inbound_sock)))
            outbound_sock = _listen(
                "127.0.0.1", self.outbound_port, "outbound",
                "choose a free port with --outbound-port (MESH_OUTBOUND_PORT)",
                reuse_port=self.reuse_port,
            )  # fmt: skip
            port = int(outbound_sock.getsockname()[1])
            self.outbound = OutboundListener(ctx, state, listen_port=port)
            bound.append((outbound_sock, "outbound", self.outbound.connection))
            for spec in self.upstreams:
                sock = _listen(
                    "127.0.0.1", spec.local_port, f"--upstream {spec}",
                    "choose a free local port in --upstream NAME=LOCALPORT",
                    reuse_port=self.reuse_port,
                )  # fmt: skip
                handler = TcpUpstreamListener(ctx, state, spec.name, spec.port)
                bound.append((sock, f"upstream {spec.name}", handler.connection))
        except BaseException:
            for sock, _, _ in bound:
                sock.close()
            raise
        for sock, name, _ in bound:
            self.ports[name] = int(sock.getsockname()[1])
        return bound

    def _inbound_handler(self, sock: socket.socket) -> ConnectionHandler:
        self.inbound = InboundListener(
            self.ctx,
            self.state,
            self.identity,
            listen_port=int(sock.getsockname()[1]),
            app_host=self.app_host,
        )
        return self.inbound.connection

    async def serve(
        self,
        store: ConfigStore | None = None,
        *,
        task_status: trio.TaskStatus[dict[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind every listener (raising :class:`ListenError` when one cannot), then
        serve until cancelled; ``started`` with the bound ports (``inbound``,
        ``outbound``, ``upstream NAME``). With ``store`` the config follows it."""
        bound = self._bind()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if store is not None:
                    nursery.start_soon(self.state.follow, store, self._on_swap)
                nursery.start_soon(self.ctx.pools.run_sweeper)
                nursery.start_soon(self._sweep_idle)
                nursery.start_soon(self._accept_all, bound)
                self.listening = True
                log.info(
                    "proxy listening: inbound %s:%d, outbound 127.0.0.1:%d%s",
                    self.inbound_host,
                    self.ports["inbound"],
                    self.ports["outbound"],
                    "".join(f", {s} (tcp)" for s in self.upstreams),
                )
                task_status.started(dict(self.ports))
        finally:
            self.listening = False
            for sock, _, _ in bound:
                sock.close()
            self.ctx.pools.close_all()

    def _on_swap(self, config: ProxyConfig) -> None:
        self.ctx.pools.retire(config.endpoints | {(self.app_host, config.inbound.app_port)})

    async def _accept_all(self, bound: list[tuple[socket.socket, str, ConnectionHandler]]) -> None:
        with self._accepting:
            async with trio.open_nursery() as loops:
                for sock, name, handler in bound:
                    loops.start_soon(self._accept_loop, sock, name, handler)
        for sock, _, _ in bound:  # drained: nothing new is accepted
            notify_closing(sock)
            sock.close()

    async def _accept_loop(
        self, lsock: socket.socket, name: str, handler: ConnectionHandler
    ) -> None:
        assert self._nursery is not None
        nursery = self._nursery
        burst = 0
        failing = False
        while True:
            try:
                sock, address = lsock.accept()
            except BlockingIOError:
                burst = 0
                await wait_readable(lsock)
                continue
            except OSError as exc:
                if exc.errno in _CAPACITY:
                    self.accept_failures += 1
                    if not failing:
                        failing = True
                        log.error(
                            "%s listener: accept failed (%s); retrying every %.1f s until "
                            "descriptors or memory are free again (raise the open file "
                            "limit: ulimit -n)",
                            name,
                            exc.strerror or exc,
                            ACCEPT_RETRY_S,
                        )
                    await trio.sleep(ACCEPT_RETRY_S)
                    continue
                if exc.errno in _TRANSIENT:
                    continue
                raise
            if failing:
                failing = False
                log.info("%s listener: accepting again", name)
            nursery.start_soon(self._run, handler, sock, address)
            burst += 1
            if burst >= ACCEPT_BURST:  # let the new connections run
                burst = 0
                await checkpoint()

    async def _run(
        self, handler: ConnectionHandler, sock: socket.socket, address: tuple[str, int]
    ) -> None:
        self._active += 1
        self.connections_total += 1
        tcp = TcpStream(sock)
        try:
            await handler(tcp, (str(address[0]), int(address[1])))
        except Exception:  # one connection's bug must not take the listener down
            self.connection_errors += 1
            now = time.monotonic()
            if now - self._error_logged_at > 60.0:
                self._error_logged_at = now
                log.exception("a proxied connection failed (logged at most once a minute)")
        finally:
            tcp.close()
            self._active -= 1
            if self._active == 0 and self.ctx.draining:
                self._idle.set()

    async def _sweep_idle(self) -> None:
        while True:
            await trio.sleep(IDLE_SWEEP_S)
            now = time.monotonic()
            limit = self.idle_timeout_s
            for ds in list(self.ctx.downstreams):
                since = ds.idle_since
                if since and now - since >= limit:
                    ds.stream.close()

    # --- drain ----------------------------------------------------------------------------------

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        """Stop accepting and let what is in flight finish, for at most ``timeout_s``.
        Returns how many connections were still open at the end (cancel the server to
        close them)."""
        if not self.ctx.draining:
            self.ctx.draining = True
            log.info(
                "draining the proxy: %d connection(s) open, up to %.1f s for them to finish",
                self._active,
                timeout_s,
            )
        self._accepting.cancel()
        for ds in list(self.ctx.downstreams):
            if ds.idle_since:
                ds.stream.close()
        if self._active:
            with trio.move_on_after(timeout_s):
                await self._idle.wait()
        left = self._active
        if left:
            log.warning("drain deadline passed with %d connection(s) still open", left)
        else:
            log.info("proxy drained")
        self.ctx.pools.close_all()
        return left
