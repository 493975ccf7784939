"""The control channel on Trio: one :class:`Link` per socketpair end, sending and
receiving :mod:`~sidecar.workers.channel` messages."""

from __future__ import annotations

import socket

import trio

from sidecar.workers.channel import ChannelError, FrameDecoder, Message, encode

RECV_SIZE = 256 * 1024
SEND_TIMEOUT_S = 10.0
"""A peer that does not read for this long (a hung worker) is treated as gone."""


class Link:
    """Messages over a stream socket. Sends are serialized (one frame at a time); one
    task receives."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._sending = trio.Lock()

    @classmethod
    def from_socket(cls, sock: socket.socket) -> Link:
        return cls(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))

    async def send(self, message: Message) -> None:
        """Raises :class:`ChannelError` when the peer is gone or stopped reading."""
        data = encode(message)
        try:
            async with self._sending:
                with trio.fail_after(SEND_TIMEOUT_S):
                    await self.stream.send_all(data)
        except trio.TooSlowError:
            raise ChannelError(
                f"the other process did not read a {message.kind} message within "
                f"{SEND_TIMEOUT_S:g} s"
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ChannelError(f"the channel is closed ({message.kind} not sent)") from exc

    async def receive(self) -> Message | None:
        """The next message; None when the other process closed its end (it exited).
        Raises :class:`ChannelError` for a broken frame or a frame cut short."""
        while True:
            message = self._decoder.next_message()
            if message is not None:
                return message
            try:
                data = await self.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if self._decoder.buffered:
                    raise ChannelError("the channel closed in the middle of a message")
                return None
            self._decoder.feed(data)

    async def aclose(self) -> None:
        await self.stream.aclose()
