"""Byte streams of the proxy: plain TCP and TLS, on non-blocking stdlib sockets driven
by Trio's low-level readiness waits.

Why not ``trio.SocketStream`` and ``trio.SSLStream``? Both are correct and general, but
the proxy's request path is hot (DESIGN.md) and every request crosses four streams:

- a trio socket operation always passes through the scheduler (a checkpoint), even
  when the data is already there; :class:`TcpStream` tries the system call first and
  only waits when it would block, with a checkpoint every :data:`CHECKPOINT_EVERY`
  operations so one busy connection cannot starve the others;
- ``trio.SSLStream`` serialises senders and receivers through locks and conflict
  detectors; :class:`TlsStream` is a small loop over ``ssl.SSLObject`` and two
  ``MemoryBIO`` s;
- ``trio.SSLStream`` cannot half-close. :class:`TlsStream.send_eof` sends TLS
  ``close_notify`` and keeps reading (TLS 1.3 allows it, and OpenSSL supports it), so a
  TCP tunnel between two sidecars passes a client's ``shutdown(SHUT_WR)`` through.

Both streams close synchronously (:meth:`close`): pools and sweepers close idle
connections without a task. A task blocked on a stream that another task closes gets
``trio.ClosedResourceError`` (``trio.lowlevel.notify_closing``).

Errors: a peer that resets or a socket error is ``trio.BrokenResourceError``; a stream
closed by us is ``trio.ClosedResourceError``. A peer that closes a TLS connection
without ``close_notify`` is read as a clean end of stream (as ``https_compatible``
does): HTTP framing detects a truncated message, and the mesh's peers are sidecars.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Protocol

import trio
from trio.lowlevel import checkpoint, notify_closing, wait_readable, wait_writable

__all__ = [
    "CAN_SPLICE",
    "RECV_SIZE",
    "Stream",
    "TcpStream",
    "TlsStream",
    "connect_tcp",
    "splice",
]

RECV_SIZE = 64 * 1024
"""Bytes asked of the kernel per read (and of TLS, per record batch)."""

CHECKPOINT_EVERY = 16
"""Operations that completed without waiting before a stream yields to the scheduler
anyway: keeps Trio's fairness without paying a scheduler round trip per call."""

_GONE = frozenset((errno.EBADF, errno.ENOTSOCK))
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


class Stream(Protocol):
    """What the proxy needs of a connection (both :class:`TcpStream` and
    :class:`TlsStream`)."""

    @property
    def closed(self) -> bool: ...

    async def receive_some(self, max_bytes: int = RECV_SIZE) -> bytes: ...

    async def send_all(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


def _broken(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _GONE:
        return trio.ClosedResourceError("the connection was closed")
    return trio.BrokenResourceError(f"connection lost: {exc.strerror or exc}")


SEND_STALL_S = 30.0
"""A send that cannot make progress for this long breaks the connection (a peer that
stopped reading). Only the slow path pays for the timer."""


CAN_SPLICE = hasattr(os, "splice")
"""Linux: plaintext-to-plaintext tunnels move bulk bytes socket -> pipe -> socket in the
kernel (:func:`splice`), never copying them into Python."""

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
SPLICE_PIPE_SIZE = 1 << 20
"""The pipe between the sockets, and the most one splice call moves: bigger than a read
(RECV_SIZE) because bytes that stay in the kernel cost no memory in Python."""
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


async def splice(src: TcpStream, dst: TcpStream, moved: Callable[[int], None]) -> bool:
    """Move what ``src`` sends to ``dst`` through a pipe in the kernel (``os.splice``)
    for as long as bytes keep coming: True at ``src``'s end of stream, False as soon as
    it has nothing to read (the pipe is closed then, so an idle tunnel holds no extra
    file descriptors; read on and call again for the next burst). ``moved(n)`` after
    each chunk. Raises like :meth:`TcpStream.receive_some` and
    :meth:`TcpStream.send_all`; does not send EOF. For bulk data it halves the proxy's
    CPU per byte: no bytes objects, two system calls per megabyte."""
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    chunk = RECV_SIZE
    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep 64 KiB
        chunk = fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, SPLICE_PIPE_SIZE)
    src_fd, dst_sock = src.sock.fileno(), dst.sock
    try:
        while True:
            try:
                got = os.splice(src_fd, pipe_w, chunk, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return False
            except OSError as exc:
                raise _broken(exc) from exc
            if got == 0:
                return True
            left = got
            while left:
                try:
                    left -= os.splice(pipe_r, dst_sock.fileno(), left, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    if dst.closed:
                        raise trio.ClosedResourceError("the connection was closed") from None
                    with trio.move_on_after(SEND_STALL_S) as stall:
                        await wait_writable(dst_sock)
                    if stall.cancelled_caught:
                        raise trio.BrokenResourceError("the peer stopped reading") from None
                except OSError as exc:
                    raise _broken(exc) from exc
            moved(got)
            await src._fair()
    finally:
        os.close(pipe_r)
        os.close(pipe_w)


class TcpStream:
    """A connected TCP socket (non-blocking, ``TCP_NODELAY``)."""

    __slots__ = ("_ops", "closed", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # The peer may already be gone: the first read says so.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.closed = False
        self._ops = 0

    async def _fair(self) -> None:
        self._ops += 1
        if self._ops >= CHECKPOINT_EVERY:
            self._ops = 0
            await checkpoint()

    async def receive_some(self, max_bytes: int = RECV_SIZE) -> bytes:
        sock = self.sock
        while True:
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                if self.closed:
                    raise trio.ClosedResourceError("the connection was closed") from None
                await wait_readable(sock)
                continue
            except OSError as exc:
                raise _broken(exc) from exc
            await self._fair()
            return data

    def recv_now(self, max_bytes: int = RECV_SIZE) -> bytes | None:
        """What can be read without waiting (``b""``: the peer closed), None when
        nothing is there. Raises like :meth:`receive_some`."""
        try:
            return self.sock.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _broken(exc) from exc

    async def send_all(self, data: bytes) -> None:
        sock = self.sock
        total = len(data)
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _broken(exc) from exc
        if sent < total:
            view = memoryview(data)
            while sent < total:
                if self.closed:
                    raise trio.ClosedResourceError("the connection was closed")
                with trio.move_on_after(SEND_STALL_S) as stall:
                    await wait_writable(sock)
                if stall.cancelled_caught:
                    raise trio.BrokenResourceError("the peer stopped reading")
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _broken(exc) from exc
        await self._fair()

    async def send_eof(self) -> None:
        """Half-close: the peer reads the end of stream; we may still read."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise _broken(exc) from exc
        await checkpoint()

    def alive_when_idle(self) -> bool:
        """For a pooled connection between requests: False when the peer has closed it
        or sent something unasked (either way it must not carry another request)."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True  # nothing to read: still open and quiet
        except OSError:
            return False
        return False  # the end of stream, or bytes nobody asked for

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        notify_closing(self.sock)
        self.sock.close()

    async def aclose(self) -> None:
        self.close()
        await checkpoint()

    def abort(self) -> None:
        """Close with a reset (SO_LINGER 0): tells the peer the exchange failed, rather
        than ending it as if it were complete."""
        if not self.closed:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.close()


class TlsStream:
    """TLS over a :class:`TcpStream`. Make one with :meth:`server` or :meth:`client`, then
    ``await stream.do_handshake()`` (bound it with a timeout).

    One task may receive while another sends (tunnels do). Records produced by a read
    (a TLS 1.3 key update answer) go out with the next write, or at once when no write
    is in progress; writes read the outgoing BIO and send it in one go, so records
    never go out of order.
    """

    __slots__ = ("_flushing", "_in", "_out", "_tls", "closed", "tcp")

    def __init__(
        self, tcp: TcpStream, tls: ssl.SSLObject, bio_in: ssl.MemoryBIO, bio_out: ssl.MemoryBIO
    ) -> None:
        self.tcp = tcp
        self._tls = tls
        self._in = bio_in
        self._out = bio_out
        self._flushing = False
        self.closed = False

    @classmethod
    def server(cls, tcp: TcpStream, context: ssl.SSLContext) -> TlsStream:
        bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        return cls(tcp, context.wrap_bio(bio_in, bio_out, server_side=True), bio_in, bio_out)

    @classmethod
    def client(
        cls, tcp: TcpStream, context: ssl.SSLContext, session: ssl.SSLSession | None = None
    ) -> TlsStream:
        bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(bio_in, bio_out, server_side=False, session=session)
        return cls(tcp, tls, bio_in, bio_out)

    # --- what TLS knows -------------------------------------------------------------------

    def getpeercert(self, binary_form: bool = False) -> object:
        """For :func:`sidecar.identity.peer_spiffe_id` / ``check_peer``."""
        return self._tls.getpeercert(binary_form)

    @property
    def session(self) -> ssl.SSLSession | None:
        return self._tls.session

    @property
    def context(self) -> ssl.SSLContext:
        return self._tls.context

    @property
    def session_reused(self) -> bool:
        return self._tls.session_reused

    @property
    def sock(self) -> socket.socket:
        return self.tcp.sock

    # --- I/O ------------------------------------------------------------------------------

    async def _flush(self) -> None:
        if self._flushing:
            return  # the task that is flushing loops until the BIO is empty
        self._flushing = True
        try:
            out = self._out
            while out.pending:
                await self.tcp.send_all(out.read())
        finally:
            self._flushing = False

    async def _fill(self) -> None:
        data = await self.tcp.receive_some(RECV_SIZE)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    async def do_handshake(self) -> None:
        """Raises ``trio.BrokenResourceError`` (from the ``ssl.SSLError``) when the
        handshake fails, e.g. the peer's certificate is not from the mesh."""
        tls = self._tls
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                if self._out.pending:
                    await self._flush()
                await self._fill()
                continue
            except (ssl.SSLError, ValueError) as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            break
        if self._out.pending:
            await self._flush()

    async def receive_some(self, max_bytes: int = RECV_SIZE) -> bytes:
        tls = self._tls
        while True:
            try:
                data = tls.read(max_bytes)
            except ssl.SSLWantReadError:
                if self._out.pending:
                    await self._flush()
                if self.closed:
                    raise trio.ClosedResourceError("the connection was closed") from None
                await self._fill()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            if not data:
                return b""  # close_notify received
            # More whole records may wait in the BIO: hand them over in one piece, so
            # the layers above run once per batch rather than once per 16 KiB record.
            if self._in.pending and len(data) < max_bytes:
                parts = [data]
                size = len(data)
                while self._in.pending and size < max_bytes:
                    try:
                        more = tls.read(max_bytes - size)
                    except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        break
                    except ssl.SSLError as exc:
                        raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
                    if not more:
                        break
                    parts.append(more)
                    size += len(more)
                data = b"".join(parts)
            if self._out.pending:
                await self._flush()
            return data

    async def send_all(self, data: bytes) -> None:
        if self.closed:
            raise trio.ClosedResourceError("the connection was closed")
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
        await self._flush()

    async def send_eof(self) -> None:
        """Send ``close_notify`` and keep reading (a TLS 1.3 half-close)."""
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is in the BIO; the peer's comes (or not) later
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
        await self._flush()

    def alive_when_idle(self) -> bool:
        """As :meth:`TcpStream.alive_when_idle`; TLS messages that may arrive between
        requests (session tickets, key updates) are consumed, anything else ends it."""
        try:
            data = self.tcp.recv_now()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if data is None:
            return True
        if not data:
            return False
        self._in.write(data)
        try:
            self._tls.read(1)
        except ssl.SSLWantReadError:
            return not self._out.pending  # an answer to send would need a task: drop it
        except ssl.SSLError:
            return False
        return False  # application data nobody asked for

    def close(self) -> None:
        self.closed = True
        self.tcp.close()

    async def aclose(self) -> None:
        self.close()
        await checkpoint()

    def abort(self) -> None:
        self.closed = True
        self.tcp.abort()


# --- connecting -----------------------------------------------------------------------------


async def connect_tcp(host: str, port: int) -> TcpStream:
    """A TCP connection to ``host:port``. An IP literal connects at once; a name is
    resolved first (in a worker thread: DNS blocks), trying each address in turn.
    Raises OSError. The caller bounds it with a timeout."""
    try:
        infos = [(_family(host), (host, port))]
    except ValueError:
        resolved = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        infos = [(int(family), (str(addr[0]), int(addr[1]))) for family, _, _, _, addr in resolved]
        if not infos:
            raise OSError(errno.EHOSTUNREACH, f"{host} has no address") from None
    last: OSError | None = None
    for family, address in infos:
        try:
            return await _connect(family, address)
        except OSError as exc:
            last = exc
    assert last is not None
    raise last


def _family(host: str) -> int:
    """AF_INET/AF_INET6 for an IP literal; ValueError for a name."""
    if ":" in host:
        socket.inet_pton(socket.AF_INET6, host.strip("[]"))
        return socket.AF_INET6
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        raise ValueError(host) from None
    return socket.AF_INET


async def _connect(family: int, address: tuple[str, int]) -> TcpStream:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect(address)
        except BlockingIOError:
            await wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                reason = f"connect to {address[0]}:{address[1]}: {_strerror(err)}"
                raise OSError(err, reason) from None
    except BaseException:
        notify_closing(sock)
        sock.close()
        raise
    return TcpStream(sock)


def _strerror(err: int) -> str:
    return os.strerror(err)
