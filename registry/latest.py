"""A value that changes, and tasks that want the newest one.

Slow watchers never build a backlog: they skip straight to the latest value, which
is what configuration consumers want (only the newest state matters). Runs under Trio
(sidecar) and asyncio (meshd): the event it waits on is the running library's own,
found with sniffio. Not written on anyio: the sidecar imports this module, and anyio
costs every sidecar process memory for nothing (the sidecar is Trio only).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Generic, Protocol, TypeVar

import sniffio

T = TypeVar("T")


class _Event(Protocol):
    """What ``trio.Event`` and ``asyncio.Event`` have in common, as used here."""

    def set(self) -> None: ...

    async def wait(self) -> object: ...


def _new_event() -> _Event:
    """An event of the running async library. The library is imported here, not at the
    top: it is already loaded (it is running), and the other one never gets loaded."""
    if sniffio.current_async_library() == "trio":
        import trio  # noqa: PLC0415 — see the docstring

        return trio.Event()
    import asyncio  # noqa: PLC0415 — see the docstring

    return asyncio.Event()


class Latest(Generic[T]):
    def __init__(self, value: T) -> None:
        self._value = value
        self._version = 0
        # Created lazily: an event belongs to a running event loop.
        self._changed: _Event | None = None

    @property
    def value(self) -> T:
        return self._value

    @property
    def version(self) -> int:
        return self._version

    def set(self, value: T) -> None:
        self._value = value
        self._version += 1
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def wait_newer(self, version: int) -> tuple[int, T]:
        """Return ``(version, value)`` as soon as the version differs from ``version``."""
        while self._version == version:
            if self._changed is None:
                self._changed = _new_event()
            await self._changed.wait()
        return self._version, self._value

    async def watch(self) -> AsyncGenerator[T]:
        """The current value, then each newer one (intermediate values may be skipped)."""
        version = self._version
        yield self._value
        while True:
            version, value = await self.wait_newer(version)
            yield value
