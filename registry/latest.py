"""A value that changes, and tasks that want the newest one.

Slow watchers never build a backlog: they skip straight to the latest value, which
is what configuration consumers want (only the newest state matters). Written on
anyio so it runs under Trio (sidecar) and asyncio (meshd).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Latest(Generic[T]):
    def __init__(self, value: T) -> None:
        self._value = value
        self._version = 0
        # Created lazily: an anyio Event needs a running event loop.
        self._changed: anyio.Event | None = None

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
                self._changed = anyio.Event()
            await self._changed.wait()
        return self._version, self._value

    async def watch(self) -> AsyncGenerator[T]:
        """The current value, then each newer one (intermediate values may be skipped)."""
        version = self._version
        yield self._value
        while True:
            version, value = await self.wait_newer(version)
            yield value
